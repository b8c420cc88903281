package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
		bad  bool
	}{
		{in: "tcp:10.0.0.1:80", want: Target{TCP, netip.MustParseAddr("10.0.0.1"), 80}},
		{in: "udp:[2001:db8::1]:53", want: Target{UDP, netip.MustParseAddr("2001:db8::1"), 53}},
		{in: "icmp:10.0.0.1", want: Target{ICMP, netip.MustParseAddr("10.0.0.1"), 0}},
		{in: "tcp:10.0.0.1:0", bad: true},
		{in: "tcp:10.0.0.1", bad: true},
		{in: "sctp:10.0.0.1:80", bad: true},
		{in: "icmp:nothost", bad: true},
		{in: "nothing", bad: true},
	} {
		got, err := ParseTarget(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseTarget(%q) = %v, want error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			continue
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestPorts(t *testing.T) {
	p, err := ParsePorts("1,65535,80")
	if err != nil || FormatPorts(p) != "1,65535,80" {
		t.Fatalf("ParsePorts = %v, %v", p, err)
	}
	for _, bad := range []string{"0", "65536", "a", "1,,2"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) succeeded", bad)
		}
	}
}

// freePort returns a port that was free on loopback for both TCP and UDP a
// moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := uint16(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		u, err := net.ListenPacket("udp4", net.JoinHostPort("127.0.0.1", itoa(p)))
		if err == nil {
			u.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

func itoa(p uint16) string { return FormatPorts([]uint16{p}) }

func TestListenAndProbeLoopback(t *testing.T) {
	ctx := t.Context()
	open, closed := freePort(t), freePort(t)
	token := NewToken()
	l, err := Listen(ctx, LocalListen{}, []string{"127.0.0.1"}, []uint16{open}, []uint16{open}, token)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	targets := []Target{
		{TCP, lo, open}, {UDP, lo, open}, {TCP, lo, closed}, {UDP, lo, closed},
	}
	res := All(ctx, Local{}, targets, token, 600*time.Millisecond)
	want := []bool{true, true, false, false}
	for i, r := range res {
		if r.Err != "" || r.Open != want[i] || r.Open != r.Verified {
			t.Errorf("%s: %+v, want open=%v verified", targets[i], r, want[i])
		}
	}
	if res[2].Detail != "refused" {
		t.Errorf("closed tcp detail = %q, want refused", res[2].Detail)
	}
	if got := l.Accepted(); len(got) != 1 || got[0].Addr() != lo {
		t.Errorf("Accepted() = %v, want one peer from %s", got, lo)
	}

	// A different token: the port is open but the answer is not ours.
	r := One(ctx, Local{}, targets[0], "cfp-other", 600*time.Millisecond)
	if !r.Open || r.Verified {
		t.Errorf("foreign token: %+v, want open and unverified", r)
	}
}

func TestProbeICMPLoopback(t *testing.T) {
	// Either socket kind will do; skip when the host allows neither.
	if c, err := (Local{}).ListenPacket(t.Context(), "ping4", "0.0.0.0"); err == nil {
		c.Close()
	} else if c, err := (Local{}).ListenPacket(t.Context(), "ip4:icmp", "0.0.0.0"); err == nil {
		c.Close()
	} else {
		requireIntegration(t, "no ICMP socket allowed: "+err.Error())
	}
	r := One(t.Context(), Local{}, Target{Proto: ICMP, Addr: netip.MustParseAddr("127.0.0.1")}, NewToken(), time.Second)
	if !r.Open || !r.Verified {
		t.Fatalf("ping 127.0.0.1: %+v", r)
	}
}

func requireIntegration(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func TestMainListenDial(t *testing.T) {
	p := freePort(t)
	token := NewToken()
	stdinR, stdinW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan int)
	go func() {
		done <- Main([]string{"listen", "-tcp", itoa(p), "-udp", itoa(p), "-token", token}, stdinR, outW, io.Discard)
		outW.Close()
	}()
	var ready Ready
	if err := json.NewDecoder(outR).Decode(&ready); err != nil || ready.Err != "" {
		t.Fatalf("ready line: %+v, %v", ready, err)
	}
	var out bytes.Buffer
	code := Main([]string{"dial", "-token", token, "-timeout", "1s", "tcp:127.0.0.1:" + itoa(p), "udp:127.0.0.1:" + itoa(p)}, nil, &out, io.Discard)
	if code != 0 {
		t.Fatalf("dial exit %d", code)
	}
	dec := json.NewDecoder(&out)
	for i := 0; i < 2; i++ {
		var r Result
		if err := dec.Decode(&r); err != nil || !r.Open || !r.Verified {
			t.Errorf("dial result %d: %+v, %v", i, r, err)
		}
	}
	stdinW.Close() // the SSH session ending
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("listen exit %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("listen did not exit when stdin closed")
	}
	if code := Main([]string{"dial", "nonsense"}, nil, io.Discard, io.Discard); code != 2 {
		t.Errorf("bad target: exit %d, want 2", code)
	}
	if code := Main([]string{"frobnicate"}, nil, io.Discard, io.Discard); code != 2 {
		t.Errorf("bad mode: exit %d, want 2", code)
	}
}

// TestDNAT installs and removes the rule in a network namespace of its own,
// so the host's tables are never touched.
func TestDNAT(t *testing.T) {
	if os.Geteuid() != 0 {
		requireIntegration(t, "needs root to create a network namespace")
	}
	errc := make(chan error, 1)
	go func() {
		// This thread enters a fresh namespace and is thrown away after:
		// a goroutine that exits while locked takes its thread with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- func() error {
			if err := DNAT(8080, 80, netip.MustParseAddr("10.0.0.2")); err != nil {
				return err
			}
			c, err := nftables.New()
			if err != nil {
				return err
			}
			tables, err := c.ListTables()
			if err != nil {
				return err
			}
			if len(tables) != 1 || tables[0].Name != dnatTable {
				return fmt.Errorf("tables after DNAT = %v", tables)
			}
			rules, err := c.GetRules(tables[0], &nftables.Chain{Name: "prerouting", Table: tables[0]})
			if err != nil || len(rules) != 1 {
				return fmt.Errorf("rules = %v, %v", rules, err)
			}
			if err := RemoveDNAT(); err != nil {
				return err
			}
			if tables, _ := c.ListTables(); len(tables) != 0 {
				return fmt.Errorf("tables after RemoveDNAT = %v", tables)
			}
			return RemoveDNAT() // idempotent
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestPingSocket checks the unprivileged ICMP path the probe prefers inside
// hardened instances, where raw sockets are not allowed, in a network
// namespace of its own whose ping_group_range admits us.
func TestPingSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		requireIntegration(t, "needs root to create a network namespace")
	}
	type outcome struct {
		closed, open Result
		err          error
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- outcome{err: err}
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			done <- outcome{err: err}
			return
		}
		target := Target{Proto: ICMP, Addr: netip.MustParseAddr("127.0.0.1")}
		// A new namespace starts with ping_group_range "1 0": nobody.
		var o outcome
		o.closed = One(context.Background(), pingOnly{}, target, NewToken(), 500*time.Millisecond)
		// /proc/sys/net follows the opening thread's namespace.
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0); err != nil {
			done <- outcome{err: err}
			return
		}
		o.open = One(context.Background(), pingOnly{}, target, NewToken(), time.Second)
		done <- o
	}()
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	if o.closed.Err == "" || !strings.Contains(o.closed.Err, "ping_group_range") {
		t.Errorf("ping socket without ping_group_range: %+v, want an error naming the sysctl", o.closed)
	}
	if !o.open.Open || !o.open.Verified {
		t.Errorf("ping socket with ping_group_range: %+v", o.open)
	}
}

// pingOnly is Local without raw sockets, like a hardened instance.
type pingOnly struct{ Local }

func (p pingOnly) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	if network == "ip4:icmp" {
		return nil, unix.EPERM
	}
	return p.Local.ListenPacket(ctx, network, address)
}
