package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	_ "github.com/compute-sdk/compute/provider/local"
	"golang.org/x/crypto/ssh"
)

// skipOrFail skips with why, or fails when COMPUTE_REQUIRE_INTEGRATION=1
// (CI), where a missing privilege must not pass silently.
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// TestLocalEndToEnd drives the real command tree against the local
// provider (prefix "ct", pool 10.229.0.0/16, its own state root): create
// with the default SSH rule, ssh with strict host-key checking, firewall
// add/list/set, default deny, delete, gc.
func TestLocalEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: boots instances")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root: the local provider creates network namespaces, nftables rules and containers")
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		skipOrFail(t, "needs the OpenSSH client (apt-get install openssh-client)")
	}
	dir := t.TempDir()
	settings := map[string]string{"root": filepath.Join(dir, "root"), "prefix": "ct", "pool": "10.229.0.0/16",
		"masterKeyFile": filepath.Join(dir, "keys", "master.key")}
	env := map[string]string{
		"HOME":            filepath.Join(dir, "home"),
		"XDG_CONFIG_HOME": filepath.Join(dir, "config"),
		"XDG_STATE_HOME":  filepath.Join(dir, "state"),
		"PATH":            os.Getenv("PATH"),
	}
	cfg := fmt.Sprintf("current: ct\nprofiles:\n  ct:\n    provider: local\n    settings: {root: %q, masterKeyFile: %q, prefix: ct, pool: 10.229.0.0/16}\n",
		settings["root"], settings["masterKeyFile"])
	must(t, os.MkdirAll(filepath.Join(env["XDG_CONFIG_HOME"], "compute"), 0o755))
	must(t, os.WriteFile(filepath.Join(env["XDG_CONFIG_HOME"], "compute", "config.yaml"), []byte(cfg), 0o644))

	// The user's key pair.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	must(t, err)
	privFile := filepath.Join(dir, "id_ed25519")
	must(t, os.WriteFile(privFile, pem.EncodeToMemory(block), 0o600))
	sshPub, err := ssh.NewPublicKey(pub)
	must(t, err)
	pubFile := privFile + ".pub"
	must(t, os.WriteFile(pubFile, ssh.MarshalAuthorizedKey(sshPub), 0o644))

	// Whatever happens, leave nothing behind.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		p, err := compute.Open(ctx, "local", settings)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer p.Close()
		insts, _ := p.ListInstances(ctx, compute.ListOptions{})
		for _, i := range insts {
			if err := p.TerminateInstance(ctx, i.ID); err != nil {
				t.Errorf("cleanup: terminate %s: %v", i.ID, err)
			}
		}
		clusters, _ := p.ListClusters(ctx)
		for _, c := range clusters {
			if err := p.DeleteCluster(ctx, c.Name); err != nil {
				t.Errorf("cleanup: delete cluster %s: %v", c.Name, err)
			}
		}
		if gc, ok := p.(compute.GarbageCollector); ok {
			gc.GC(ctx)
		}
		// Remove the router, host link and cgroup directories the
		// provider shares between instances: the test made them.
		if td, ok := p.(interface{ Teardown(context.Context) error }); ok {
			if err := td.Teardown(ctx); err != nil {
				t.Errorf("cleanup: teardown: %v", err)
			}
		}
	})

	run := func(args ...string) result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		ios, _, out, errOut := Test()
		f := NewFactory(ios)
		f.Getenv = func(k string) string { return env[k] }
		code := Main(ctx, f, args)
		return result{code: code, stdout: out.String(), stderr: errOut.String()}
	}
	ok := func(v any, args ...string) result {
		t.Helper()
		r := run(append(args, "-o", "json")...)
		if r.code != 0 {
			t.Fatalf("computectl %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
		if v != nil {
			must(t, json.Unmarshal([]byte(r.stdout), v))
		}
		return r
	}

	ok(nil, "cluster", "create", "tr")
	var w1 compute.Instance
	r := ok(&w1, "create", "w1", "--cluster", "tr", "--ssh-key", pubFile, "--wait")
	if w1.Status != compute.StatusRunning || len(w1.SSH.HostKeys) == 0 {
		t.Fatalf("created %+v", w1)
	}
	if !strings.Contains(r.stderr, "opened tcp:22 to ") || !strings.Contains(r.stderr, "(this host)") {
		t.Errorf("create did not say what it opened: %q", r.stderr)
	}

	// SSH works, verified against the reported host key, and passes the
	// remote status on.
	if r := run("ssh", "-i", privFile, "w1", "--", "systemctl", "is-system-running", "--wait"); r.code != 0 || strings.TrimSpace(r.stdout) != "running" {
		t.Errorf("ssh systemctl is-system-running: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := run("ssh", "-i", privFile, "w1", "--", "exit", "3"); r.code != 3 {
		t.Errorf("ssh -- exit 3: exit %d stderr %q", r.code, r.stderr)
	}
	kh, err := os.ReadFile(filepath.Join(env["XDG_STATE_HOME"], "compute", "known_hosts.d", w1.ID))
	if err != nil || string(kh) != w1.SSH.KnownHosts() {
		t.Errorf("known_hosts = %q, %v; want %q", kh, err, w1.SSH.KnownHosts())
	}

	var added RuleView
	ok(&added, "firewall", "add", "w1", "tcp:8080 from 10.0.0.0/8")
	var rules []RuleView
	ok(&rules, "firewall", "list", "w1")
	if len(rules) != 2 {
		t.Errorf("firewall list w1 = %+v, want the SSH rule and tcp:8080", rules)
	}

	// An instance created with --no-ssh-rule is closed, port 22 included.
	var lone compute.Instance
	ok(&lone, "create", "lone", "--ssh-key", pubFile, "--no-ssh-rule", "--wait")
	ok(&rules, "firewall", "list", "lone")
	if len(rules) != 0 {
		t.Errorf("lone has rules %+v", rules)
	}
	if reachable(lone.SSH.Addr()) {
		t.Errorf("lone: %s reachable with no rule", lone.SSH.Addr())
	}
	// And w1 closes when its rules are set to nothing.
	if !reachable(w1.SSH.Addr()) {
		t.Errorf("w1: %s unreachable while the SSH rule is in place", w1.SSH.Addr())
	}
	ok(&rules, "firewall", "set", "w1", "--none")
	if reachable(w1.SSH.Addr()) {
		t.Errorf("w1: %s reachable after firewall set --none", w1.SSH.Addr())
	}

	// Bad input through the real provider: nothing changes.
	if r := run("firewall", "add", "w1", "tcp:70000 from 10.0.0.0/8"); r.code != ExitUsage {
		t.Errorf("bad rule: exit %d", r.code)
	}
	if r := run("delete", "w1", "ghost"); r.code != ExitNotFound {
		t.Errorf("delete with an unknown name: exit %d", r.code)
	}
	var list []compute.Instance
	ok(&list, "list")
	if len(list) != 2 {
		t.Errorf("after failed commands: %d instances, want 2", len(list))
	}

	// Deleted in creation order: an instance must be deletable while
	// instances created after it still run.
	ok(nil, "delete", "w1", "lone")
	ok(nil, "cluster", "delete", "tr")
	ok(&list, "list")
	if len(list) != 0 {
		t.Errorf("after delete: %+v", list)
	}
	var gc compute.GCReport
	ok(&gc, "gc")
	if len(gc.Removed) != 0 {
		t.Errorf("gc after a clean delete removed %v: something leaked", gc.Removed)
	}
}

// reachable reports whether a TCP connection to addr succeeds in 2s.
func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
