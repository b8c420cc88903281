package local

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
	"github.com/compute-sdk/compute/provider/local/internal/network"
)

// Test values: prefix "lt" and pool 10.232.0.0/16 belong to this package's
// tests alone (see the team brief). Tests run one after another: they share
// the prefix's router.
const testPrefix = "lt"

var testPool = netip.MustParsePrefix("10.232.0.0/16")

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Geteuid() == 0 {
		// Remove the router and host link the tests' providers shared.
		if n, err := network.New(network.Config{Prefix: testPrefix, Pool: testPool}); err == nil {
			n.Teardown(context.Background())
		}
		cgroups.RemovePrefix("compute-" + testPrefix)
	}
	os.Exit(code)
}

// requireIntegration skips the test when it cannot run instances here, or
// fails it when COMPUTE_REQUIRE_INTEGRATION=1.
func requireIntegration(t testing.TB) {
	t.Helper()
	var reason string
	if os.Geteuid() != 0 {
		reason = "needs root (containers, namespaces, nftables, mounts)"
	} else {
		for _, c := range Doctor(context.Background(), Config{}) {
			if !c.OK && c.required {
				reason = fmt.Sprintf("host check %s failed: %s (fix: %s)", c.Name, c.Detail, c.Fix)
				break
			}
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("COMPUTE_REQUIRE_INTEGRATION=1: %s", reason)
	}
	t.Skip(reason)
}

// newTestProvider returns a provider with its own Root and master key. At
// the end of the test every instance and cluster is removed and the test
// fails if anything of them remains.
func newTestProvider(t testing.TB, mod ...func(*Config)) *Provider {
	t.Helper()
	requireIntegration(t)
	dir := t.TempDir()
	cfg := Config{
		Root:          filepath.Join(dir, "root"),
		Prefix:        testPrefix,
		Pool:          testPool,
		MasterKeyFile: filepath.Join(dir, "keys", "master.key"),
	}
	for _, m := range mod {
		m(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	p, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		insts, _ := p.ListInstances(ctx, compute.ListOptions{})
		for _, i := range insts {
			if err := p.TerminateInstance(ctx, i.ID); err != nil && !errors.Is(err, compute.ErrNotFound) {
				t.Errorf("cleanup: terminate %s: %v", i.ID, err)
			}
		}
		cls, _ := p.ListClusters(ctx)
		for _, c := range cls {
			if err := p.DeleteCluster(ctx, c.Name); err != nil {
				t.Errorf("cleanup: delete cluster %s: %v", c.Name, err)
			}
		}
		if rep, err := p.GC(ctx); err != nil || len(rep.Removed) > 0 {
			t.Errorf("cleanup: GC after terminate removed %v (err %v): terminate left them", rep.Removed, err)
		}
		if left := instanceObjects(t, p); len(left) > 0 {
			t.Errorf("cleanup: left behind: %v", left)
		}
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if m, _, _ := mountState(p.instancesDir()); m {
			t.Errorf("close left %s mounted", p.instancesDir())
		}
	})
	return p
}

// instanceObjects is the provider's inventory minus the objects that exist
// as long as the provider does (router, host link, base tables).
func instanceObjects(t testing.TB, p *Provider) []string {
	t.Helper()
	inv, err := p.Inventory(context.Background())
	if err != nil {
		t.Fatalf("inventory: %v", err)
	}
	var out []string
	for _, o := range inv {
		if strings.Contains(o, "i-") || strings.Contains(o, testPrefix+"v") || strings.Contains(o, testPrefix+"b") ||
			strings.HasPrefix(o, "mount") || strings.HasPrefix(o, "loop") || strings.HasPrefix(o, "cgroup") ||
			strings.HasPrefix(o, "process") || strings.HasPrefix(o, "directory") || strings.HasPrefix(o, "nspawn") {
			out = append(out, o)
		}
	}
	return out
}

// testKey is an SSH key pair for logging in.
type testKey struct {
	signer ssh.Signer
	auth   string // authorized_keys line
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{signer: s, auth: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))}
}

// create creates an instance and waits until it runs.
func create(t testing.TB, p *Provider, spec compute.InstanceSpec) *compute.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := p.CreateInstance(ctx, spec)
	if err != nil {
		t.Fatalf("create %s: %v", spec.Name, err)
	}
	inst, err = compute.WaitWithOptions(ctx, p, inst.ID, compute.WaitOptions{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}, compute.StatusRunning)
	if err != nil {
		t.Fatalf("wait %s: %v\n%s", spec.Name, err, consoleTail(p, inst.ID))
	}
	return inst
}

func consoleTail(p *Provider, id string) string {
	b, _ := os.ReadFile(p.consoleLog(id))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// allowSSHFromHost opens port 22 of inst to this host.
func allowSSHFromHost(t testing.TB, p *Provider, id string) {
	t.Helper()
	ctx := context.Background()
	cp, _ := p.CallerPrefixes(ctx)
	if _, err := p.AddRule(ctx, compute.InstanceTarget(id), compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: cp}); err != nil {
		t.Fatal(err)
	}
}

// dialSSH logs in as user with key, verifying the host key the provider
// reported, from the host's network namespace.
func dialSSH(inst *compute.Instance, user string, key testKey) (*ssh.Client, error) {
	cb, err := inst.SSH.HostKeyCallback()
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(key.signer)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: inst.SSH.HostKeyAlgorithms(),
		Timeout:           5 * time.Second,
	}
	return ssh.Dial("tcp", inst.SSH.Addr(), cfg)
}

func mustSSH(t testing.TB, inst *compute.Instance, key testKey) *ssh.Client {
	t.Helper()
	c, err := dialSSH(inst, "root", key)
	if err != nil {
		t.Fatalf("ssh %s: %v", inst.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run runs cmd over c and returns its trimmed output.
func run(t testing.TB, c *ssh.Client, cmd string) string {
	t.Helper()
	out, err := runErr(c, cmd)
	if err != nil {
		t.Fatalf("%q: %v: %s", cmd, err, out)
	}
	return out
}

func runErr(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	b, err := s.CombinedOutput(cmd)
	return strings.TrimSpace(string(b)), err
}

// reachable reports whether a TCP connection to addr:port from the host
// gets through (and the listener sees it), within a short timeout.
func tcpReachable(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr netip.Addr, port uint16) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := dial(ctx, "tcp", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		return false
	}
	defer c.Close()
	// The listener inside echoes a line: make sure we got through to it,
	// not just to a SYN/ACK from anything in between.
	c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	n, _ := c.Read(buf)
	return n > 0
}

func hostDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}

func errorsIsNotFound(err error) bool { return errors.Is(err, compute.ErrNotFound) }

func stringsReplaceAll(s, old, new string) string { return strings.ReplaceAll(s, old, new) }
