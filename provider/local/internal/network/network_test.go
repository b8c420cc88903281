package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/compute-sdk/compute"
)

// Test values: prefix "nt" and pool 10.233.0.0/16 belong to this package's
// tests alone (see the team brief), so nothing here collides with other
// packages' tests running concurrently.
const testPrefix = "nt"

var testPool = netip.MustParsePrefix("10.233.0.0/16")

// requireNetAdmin skips the test when it cannot create network namespaces
// and nftables rules, or fails it when COMPUTE_REQUIRE_INTEGRATION=1.
func requireNetAdmin(t testing.TB) {
	t.Helper()
	var reason string
	switch {
	case os.Geteuid() != 0:
		reason = "needs root (network namespaces, nftables)"
	default:
		if _, err := os.Stat("/proc/self/ns/net"); err != nil {
			reason = "no network namespace support: " + err.Error()
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

// newTestNetwork returns a Network with a router, torn down at the end of
// the test, when the test also checks that nothing with the prefix is left.
func newTestNetwork(t testing.TB) *Network {
	t.Helper()
	requireNetAdmin(t)
	n, err := New(Config{Prefix: testPrefix, Pool: testPool})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A previous run killed mid-test may have left objects behind.
	if err := n.Teardown(ctx); err != nil {
		t.Fatalf("initial teardown: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if out, err := exec.Command("ip", "netns", "exec", testPrefix+"-r", "nft", "list", "ruleset").CombinedOutput(); err == nil {
				t.Logf("router ruleset at failure:\n%s", out)
			}
		}
		if err := n.Teardown(ctx); err != nil {
			t.Errorf("teardown: %v", err)
		}
		assertNoObjects(t, n)
	})
	if err := n.EnsureRouter(ctx); err != nil {
		t.Fatalf("EnsureRouter: %v", err)
	}
	return n
}

// assertNoObjects checks, through Objects and independently through
// /run/netns and the host's links, that nothing with the prefix is left.
func assertNoObjects(t testing.TB, n *Network) {
	t.Helper()
	objs, err := n.Objects(context.Background())
	if err != nil {
		t.Errorf("Objects: %v", err)
	}
	if len(objs) != 0 {
		t.Errorf("objects left after teardown: %q", objs)
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), testPrefix+"-") {
			t.Errorf("netns left: /run/netns/%s", e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Errorf("LinkList: %v", err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, testPrefix+"-") {
			t.Errorf("link left in host netns: %s", l.Attrs().Name)
		}
	}
	if out, err := exec.Command("nft", "list", "tables").CombinedOutput(); err == nil && strings.Contains(string(out), "compute_"+testPrefix) {
		t.Errorf("host nft table left: %s", out)
	}
}

// instance is a test instance: a network namespace attached to a bridge.
type instance struct {
	id   string
	addr netip.Addr
	ns   string
}

func attach(t testing.TB, n *Network, id, bridge, addr string) instance {
	t.Helper()
	a := netip.MustParseAddr(addr)
	b := a.As4()
	mac := net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
	ns, err := n.AttachInstance(context.Background(), Attachment{ID: id, Bridge: bridge, Addr: a, MAC: mac})
	if err != nil {
		t.Fatalf("AttachInstance %s: %v", id, err)
	}
	return instance{id: id, addr: a, ns: ns}
}

func ensureBridge(t testing.TB, n *Network, name, subnet string) {
	t.Helper()
	if err := n.EnsureBridge(context.Background(), name, netip.MustParsePrefix(subnet)); err != nil {
		t.Fatalf("EnsureBridge %s: %v", name, err)
	}
}

// dialer dials from some vantage point.
type dialer func(ctx context.Context, network, address string) (net.Conn, error)

// fromHost dials from the test process's own network namespace.
func fromHost() dialer { return (&net.Dialer{}).DialContext }

// fromNS dials from inside the namespace at path, optionally from laddr.
func fromNS(path string, laddr net.Addr) dialer {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := InNetNS(path, func() error {
			var err error
			c, err = (&net.Dialer{LocalAddr: laddr}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}

// serve starts a TCP listener and a UDP echo server on port inside the
// namespace at path ("" = the test's own namespace, on addr). Each answers
// with "hi".
func serve(t testing.TB, path, addr string, port int) {
	t.Helper()
	hp := net.JoinHostPort(addr, fmt.Sprint(port))
	var l net.Listener
	var pc net.PacketConn
	listen := func() error {
		var err error
		if l, err = net.Listen("tcp4", hp); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", hp)
		return err
	}
	var err error
	if path == "" {
		err = listen()
	} else {
		err = InNetNS(path, listen)
	}
	if err != nil {
		t.Fatalf("listen %s in %q: %v", hp, path, err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("hi"), from)
		}
	}()
}

// How long a probe waits. Where the test expects an answer it waits long,
// so a loaded machine does not fail it; where it expects silence it waits
// short: a path through local veths answers in about a millisecond, so
// half a second of silence means closed (breaking the ruleset on purpose
// makes these tests fail, which is how this was checked).
const (
	shortWait = 500 * time.Millisecond
	longWait  = 3 * time.Second
)

func wait(expect bool) time.Duration {
	if expect {
		return longWait
	}
	return shortWait
}

// reachable reports whether d gets "hi" back over network ("tcp4"/"udp4")
// from address; expect says which answer the caller expects (it sets only
// how long to wait).
func reachable(d dialer, network, address string, expect bool) bool {
	probeTimeout := wait(expect)
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	c, err := d(ctx, network, address)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	if network == "udp4" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return false
		}
	}
	buf := make([]byte, 8)
	k, _ := c.Read(buf)
	return string(buf[:k]) == "hi"
}

// pings reports whether an ICMP echo from the namespace at path ("" = the
// test's own) to dst is answered; expect is as for reachable.
func pings(t testing.TB, path string, dst netip.Addr, expect bool) bool {
	t.Helper()
	probeTimeout := wait(expect)
	var pc *icmp.PacketConn
	open := func() error {
		var err error
		pc, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}
	var err error
	if path == "" {
		err = open()
	} else {
		err = InNetNS(path, open)
	}
	if err != nil {
		t.Fatalf("icmp socket: %v", err)
	}
	defer pc.Close()
	id := int(time.Now().UnixNano() & 0xffff)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("compute")}}
	b, _ := msg.Marshal(nil)
	if _, err := pc.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return false
	}
	deadline := time.Now().Add(probeTimeout)
	pc.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			return false
		}
		m, err := icmp.ParseMessage(1, buf[:k])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
			return true
		}
	}
	return false
}

func hp(a netip.Addr, port int) string { return net.JoinHostPort(a.String(), fmt.Sprint(port)) }

type reach struct {
	name    string
	d       dialer
	network string
	addr    string
	want    bool
}

func checkReach(t *testing.T, cases []reach) {
	t.Helper()
	for _, c := range cases {
		if got := reachable(c.d, c.network, c.addr, c.want); got != c.want {
			t.Errorf("%s: %s %s reachable = %v, want %v", c.name, c.network, c.addr, got, c.want)
		}
	}
}

func tcp(port uint16, src netip.Prefix) Allow {
	return Allow{Protocol: compute.ProtocolTCP, Ports: compute.Port(port), Source: src}
}

func TestDefaultDenyAndInstanceRules(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	a1 := attach(t, n, "000000a1", "ntba", "10.233.1.11")
	probe, err := n.AttachProbeHost(ctx, "out")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for _, p := range []int{22, 8080, 8081} {
		serve(t, a1.ns, "0.0.0.0", p)
	}
	host := fromHost()

	t.Run("default deny", func(t *testing.T) {
		checkReach(t, []reach{
			{"host", host, "tcp4", hp(a1.addr, 8080), false},
			{"host", host, "udp4", hp(a1.addr, 8080), false},
			{"host ssh", host, "tcp4", hp(a1.addr, 22), false},
			{"probe", probe.DialContext, "tcp4", hp(a1.addr, 8080), false},
		})
		if pings(t, "", a1.addr, false) {
			t.Error("host ping to instance answered under default deny")
		}
		// The listener is there: from inside, it answers.
		if !reachable(fromNS(a1.ns, nil), "tcp4", "127.0.0.1:8080", true) {
			t.Fatal("listener not answering inside the instance; the test is broken")
		}
	})

	hostOnly := netip.PrefixFrom(n.HostAddr(), 32)
	t.Run("rule opens exactly port and source", func(t *testing.T) {
		err := n.SetInstanceRules(ctx, a1.id, a1.addr, []Allow{
			tcp(8080, hostOnly),
			{Protocol: compute.ProtocolUDP, Ports: compute.Port(8080), Source: hostOnly},
			{Protocol: compute.ProtocolICMP, Source: hostOnly},
		})
		if err != nil {
			t.Fatal(err)
		}
		checkReach(t, []reach{
			{"host", host, "tcp4", hp(a1.addr, 8080), true},
			{"host udp", host, "udp4", hp(a1.addr, 8080), true},
			{"host neighbouring port", host, "tcp4", hp(a1.addr, 8081), false},
			{"host ssh", host, "tcp4", hp(a1.addr, 22), false},
			{"probe outside the CIDR", probe.DialContext, "tcp4", hp(a1.addr, 8080), false},
			{"probe udp", probe.DialContext, "udp4", hp(a1.addr, 8080), false},
		})
		if !pings(t, "", a1.addr, true) {
			t.Error("icmp rule: host ping unanswered")
		}
		if pings(t, probe.NetNS(), a1.addr, false) {
			t.Error("icmp rule for the host answered the probe")
		}
	})

	t.Run("replace and idempotent", func(t *testing.T) {
		probeOnly := netip.PrefixFrom(probe.Addr(), 32)
		rules := []Allow{tcp(8081, probeOnly), tcp(22, probeOnly)}
		for range 2 {
			if err := n.SetInstanceRules(ctx, a1.id, a1.addr, rules); err != nil {
				t.Fatal(err)
			}
		}
		checkReach(t, []reach{
			{"host lost 8080", host, "tcp4", hp(a1.addr, 8080), false},
			{"probe 8081", probe.DialContext, "tcp4", hp(a1.addr, 8081), true},
			{"probe ssh", probe.DialContext, "tcp4", hp(a1.addr, 22), true},
			{"probe 8080", probe.DialContext, "tcp4", hp(a1.addr, 8080), false},
		})
	})

	t.Run("overlapping rules", func(t *testing.T) {
		err := n.SetInstanceRules(ctx, a1.id, a1.addr, []Allow{
			{Protocol: compute.ProtocolTCP, Ports: compute.Ports(8000, 8080), Source: netip.MustParsePrefix("10.0.0.0/8")},
			{Protocol: compute.ProtocolTCP, Ports: compute.Ports(8080, 8090), Source: netip.MustParsePrefix("10.233.255.0/24")},
			{Protocol: compute.ProtocolAll, Source: hostOnly},
			{Protocol: compute.ProtocolTCP, Ports: compute.Port(8081), Source: hostOnly},
		})
		if err != nil {
			t.Fatal(err)
		}
		checkReach(t, []reach{
			{"host all", host, "tcp4", hp(a1.addr, 22), true},
			{"host all udp", host, "udp4", hp(a1.addr, 8081), true},
			{"probe 8081 via /24", probe.DialContext, "tcp4", hp(a1.addr, 8081), true},
			{"probe 22", probe.DialContext, "tcp4", hp(a1.addr, 22), false},
		})
	})

	t.Run("revoke closes", func(t *testing.T) {
		if err := n.SetInstanceRules(ctx, a1.id, a1.addr, nil); err != nil {
			t.Fatal(err)
		}
		checkReach(t, []reach{
			{"host", host, "tcp4", hp(a1.addr, 8080), false},
			{"host ssh", host, "tcp4", hp(a1.addr, 22), false},
			{"probe", probe.DialContext, "tcp4", hp(a1.addr, 8081), false},
		})
		if pings(t, "", a1.addr, false) {
			t.Error("ping answered after revoke")
		}
	})
}

func TestClusters(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	ensureBridge(t, n, "ntbb", "10.233.2.0/24")
	a1 := attach(t, n, "000000a1", "ntba", "10.233.1.11")
	a2 := attach(t, n, "000000a2", "ntba", "10.233.1.12")
	b1 := attach(t, n, "000000b1", "ntbb", "10.233.2.11")
	probe, err := n.AttachProbeHost(ctx, "out")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for _, in := range []instance{a1, a2, b1} {
		serve(t, in.ns, "0.0.0.0", 7000)
		serve(t, in.ns, "0.0.0.0", 7001)
		serve(t, in.ns, "0.0.0.0", 41234)
	}

	t.Run("same cluster talks", func(t *testing.T) {
		checkReach(t, []reach{
			{"a1->a2 tcp", fromNS(a1.ns, nil), "tcp4", hp(a2.addr, 41234), true},
			{"a2->a1 udp", fromNS(a2.ns, nil), "udp4", hp(a1.addr, 7001), true},
		})
		if !pings(t, a1.ns, a2.addr, true) {
			t.Error("a1 ping a2 unanswered")
		}
	})

	t.Run("other cluster isolated", func(t *testing.T) {
		checkReach(t, []reach{
			{"b1->a1 tcp", fromNS(b1.ns, nil), "tcp4", hp(a1.addr, 7000), false},
			{"b1->a1 udp", fromNS(b1.ns, nil), "udp4", hp(a1.addr, 7000), false},
			{"a1->b1 tcp", fromNS(a1.ns, nil), "tcp4", hp(b1.addr, 7000), false},
		})
		if pings(t, b1.ns, a1.addr, false) {
			t.Error("b1 ping a1 answered")
		}
	})

	t.Run("source bridge rule", func(t *testing.T) {
		if err := n.SetInstanceRules(ctx, a1.id, a1.addr, []Allow{
			{Protocol: compute.ProtocolTCP, Ports: compute.Port(7000), SourceBridge: "ntbb"},
		}); err != nil {
			t.Fatal(err)
		}
		checkReach(t, []reach{
			{"b1->a1:7000", fromNS(b1.ns, nil), "tcp4", hp(a1.addr, 7000), true},
			{"b1->a1:7001", fromNS(b1.ns, nil), "tcp4", hp(a1.addr, 7001), false},
			{"b1->a1:7000 udp", fromNS(b1.ns, nil), "udp4", hp(a1.addr, 7000), false},
			{"b1->a2:7000", fromNS(b1.ns, nil), "tcp4", hp(a2.addr, 7000), false},
			{"probe->a1:7000", probe.DialContext, "tcp4", hp(a1.addr, 7000), false},
		})
		// Reply traffic only: a1 still cannot open connections to b1.
		if reachable(fromNS(a1.ns, nil), "tcp4", hp(b1.addr, 7000), false) {
			t.Error("a1->b1 opened by a rule in the other direction")
		}
	})

	t.Run("cluster target rule", func(t *testing.T) {
		if err := n.SetBridgeRules(ctx, "ntba", []Allow{
			tcp(7001, netip.PrefixFrom(probe.Addr(), 32)),
			{Protocol: compute.ProtocolICMP, SourceBridge: "ntbb"},
		}); err != nil {
			t.Fatal(err)
		}
		checkReach(t, []reach{
			{"probe->a1:7001", probe.DialContext, "tcp4", hp(a1.addr, 7001), true},
			{"probe->a2:7001", probe.DialContext, "tcp4", hp(a2.addr, 7001), true},
			{"probe->a2:7000", probe.DialContext, "tcp4", hp(a2.addr, 7000), false},
			{"host->a2:7001", fromHost(), "tcp4", hp(a2.addr, 7001), false},
			{"probe->b1:7001", probe.DialContext, "tcp4", hp(b1.addr, 7001), false},
		})
		if !pings(t, b1.ns, a2.addr, true) {
			t.Error("cluster icmp rule from bridge ntbb: b1 ping a2 unanswered")
		}
		if pings(t, a1.ns, b1.addr, false) {
			t.Error("a1 ping b1 answered (rule was for the other direction)")
		}
		if err := n.SetBridgeRules(ctx, "ntba", nil); err != nil {
			t.Fatal(err)
		}
		checkReach(t, []reach{{"probe->a1:7001 after revoke", probe.DialContext, "tcp4", hp(a1.addr, 7001), false}})
	})

	t.Run("egress", func(t *testing.T) {
		serve(t, probe.NetNS(), "0.0.0.0", 9100)
		serve(t, "", n.HostAddr().String(), 9101)
		serve(t, n.RouterNetNS(), "0.0.0.0", 9102)
		gw := netip.MustParseAddr("10.233.1.1")
		checkReach(t, []reach{
			{"a1->probe", fromNS(a1.ns, nil), "tcp4", hp(probe.Addr(), 9100), true},
			{"b1->probe udp", fromNS(b1.ns, nil), "udp4", hp(probe.Addr(), 9100), true},
			{"a1->host", fromNS(a1.ns, nil), "tcp4", hp(n.HostAddr(), 9101), false},
			{"a1->router gateway", fromNS(a1.ns, nil), "tcp4", hp(gw, 9102), false},
			{"a1->router host0", fromNS(a1.ns, nil), "tcp4", hp(n.HostAddr().Next(), 9102), false},
			{"probe->host", probe.DialContext, "tcp4", hp(n.HostAddr(), 9101), false},
			{"host->probe", fromHost(), "tcp4", hp(probe.Addr(), 9100), true},
		})
		if pings(t, a1.ns, gw, false) {
			t.Error("instance ping to its gateway (the router) answered")
		}
		if pings(t, a1.ns, n.HostAddr(), false) {
			t.Error("instance ping to the host answered")
		}
	})

	t.Run("detach and delete", func(t *testing.T) {
		for _, id := range []string{a1.id, a2.id, b1.id} {
			for range 2 { // idempotent
				if err := n.DetachInstance(ctx, id); err != nil {
					t.Fatalf("DetachInstance %s: %v", id, err)
				}
			}
		}
		for _, br := range []string{"ntba", "ntbb"} {
			for range 2 {
				if err := n.DeleteBridge(ctx, br); err != nil {
					t.Fatalf("DeleteBridge %s: %v", br, err)
				}
			}
		}
		if err := probe.Close(); err != nil {
			t.Fatal(err)
		}
		objs, err := n.Objects(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Only the router itself may be left.
		for _, o := range objs {
			for _, id := range []string{"000000a1", "000000a2", "000000b1", "ntba", "ntbb", "ntpout", "-p-out", "10.233.1.", "10.233.2."} {
				if strings.Contains(o, id) {
					t.Errorf("left after detach: %q", o)
				}
			}
		}
	})
}

func TestAntiSpoofing(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	a1 := attach(t, n, "000000a1", "ntba", "10.233.1.11")
	a2 := attach(t, n, "000000a2", "ntba", "10.233.1.12")
	serve(t, a2.ns, "0.0.0.0", 7000)
	if err := n.SetInstanceRules(ctx, a1.id, a1.addr, []Allow{tcp(7000, netip.MustParsePrefix("10.233.1.0/24"))}); err != nil {
		t.Fatal(err)
	}
	if !reachable(fromNS(a1.ns, nil), "tcp4", hp(a2.addr, 7000), true) {
		t.Fatal("legit a1->a2 blocked")
	}
	in1, err := openNS(a1.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer in1.Close()
	eth0, err := in1.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}

	in2, err := openNS(a2.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer in2.Close()
	eth2, err := in2.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	// Static neighbour entries take ARP out of the picture, so each case
	// below is stopped by the rule it is about (the IP rule, the MAC rule)
	// and not by the ARP rules.
	neigh := func(h *nsHandle, link netlink.Link, ip netip.Addr, mac net.HardwareAddr) {
		t.Helper()
		if err := h.nl.NeighSet(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}); err != nil {
			t.Fatal(err)
		}
	}
	neigh(in1, eth0, a2.addr, eth2.Attrs().HardwareAddr)

	t.Run("forged IP", func(t *testing.T) {
		before, err := n.spoofCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		forged := netip.MustParseAddr("10.233.1.99")
		if err := in1.nl.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(forged, 24))}); err != nil {
			t.Fatal(err)
		}
		defer in1.nl.AddrDel(eth0, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(forged, 24))})
		neigh(in2, eth2, forged, eth0.Attrs().HardwareAddr)
		from := &net.TCPAddr{IP: forged.AsSlice()}
		if reachable(fromNS(a1.ns, from), "tcp4", hp(a2.addr, 7000), false) {
			t.Error("forged source 10.233.1.99 reached a2")
		}
		if reachable(fromNS(a1.ns, from), "tcp4", hp(n.HostAddr(), 1), false) {
			t.Error("forged source reached the host")
		}
		after, err := n.spoofCounts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after["spoof_ip"] <= before["spoof_ip"] {
			t.Errorf("spoof_ip counter did not rise: %d -> %d", before["spoof_ip"], after["spoof_ip"])
		}
		if total, _ := n.SpoofDrops(ctx); total < after["spoof_ip"] {
			t.Errorf("SpoofDrops = %d, below the IP counter %d", total, after["spoof_ip"])
		}
		if !reachable(fromNS(a1.ns, nil), "tcp4", hp(a2.addr, 7000), true) {
			t.Error("legit traffic blocked after the forged attempt")
		}
	})

	t.Run("forged MAC", func(t *testing.T) {
		before, _ := n.spoofCounts(ctx)
		orig := eth0.Attrs().HardwareAddr
		forged := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
		if err := in1.nl.LinkSetHardwareAddr(eth0, forged); err != nil {
			t.Fatal(err)
		}
		neigh(in2, eth2, a1.addr, forged)
		ok := reachable(fromNS(a1.ns, nil), "tcp4", hp(a2.addr, 7000), false)
		if err := in1.nl.LinkSetHardwareAddr(eth0, orig); err != nil {
			t.Fatal(err)
		}
		neigh(in2, eth2, a1.addr, orig)
		if ok {
			t.Error("frames with a forged MAC reached a2")
		}
		after, _ := n.spoofCounts(ctx)
		if after["spoof_mac"] <= before["spoof_mac"] {
			t.Errorf("spoof_mac counter did not rise: %d -> %d", before["spoof_mac"], after["spoof_mac"])
		}
		if !reachable(fromNS(a1.ns, nil), "tcp4", hp(a2.addr, 7000), true) {
			t.Error("legit traffic blocked after the MAC was restored")
		}
	})

	t.Run("forged ARP", func(t *testing.T) {
		before, _ := n.spoofCounts(ctx)
		// Plain ARP from a forged address: the kernel resolves a2 afresh
		// with the forged sender IP.
		forged := netip.MustParseAddr("10.233.1.98")
		if err := in1.nl.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(forged, 24))}); err != nil {
			t.Fatal(err)
		}
		defer in1.nl.AddrDel(eth0, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(forged, 24))})
		in1.nl.NeighDel(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, IP: a2.addr.AsSlice()})
		defer neigh(in1, eth0, a2.addr, eth2.Attrs().HardwareAddr)
		if reachable(fromNS(a1.ns, &net.TCPAddr{IP: forged.AsSlice()}), "tcp4", hp(a2.addr, 7000), false) {
			t.Error("forged source 10.233.1.98 reached a2")
		}
		after, _ := n.spoofCounts(ctx)
		if after["spoof_arp_ip"] <= before["spoof_arp_ip"] {
			t.Errorf("spoof_arp_ip counter did not rise: %d -> %d", before["spoof_arp_ip"], after["spoof_arp_ip"])
		}
	})

	t.Run("counters survive EnsureRouter", func(t *testing.T) {
		before, _ := n.SpoofDrops(ctx)
		if err := n.EnsureRouter(ctx); err != nil {
			t.Fatal(err)
		}
		after, _ := n.SpoofDrops(ctx)
		if before == 0 || after < before {
			t.Errorf("SpoofDrops %d before EnsureRouter, %d after", before, after)
		}
		// Rules survive it too.
		if !reachable(fromNS(a1.ns, nil), "tcp4", hp(a2.addr, 7000), true) {
			t.Error("a1->a2 blocked after EnsureRouter")
		}
	})
}

func TestAttachIdempotentAndSysctls(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	a1 := attach(t, n, "000000a1", "ntba", "10.233.1.11")
	if err := n.SetInstanceRules(ctx, a1.id, a1.addr, []Allow{tcp(7000, netip.PrefixFrom(n.HostAddr(), 32))}); err != nil {
		t.Fatal(err)
	}
	again := attach(t, n, "000000a1", "ntba", "10.233.1.11")
	if again.ns != a1.ns {
		t.Fatalf("second attach returned %s, first %s", again.ns, a1.ns)
	}
	serve(t, a1.ns, "0.0.0.0", 7000)
	if !reachable(fromHost(), "tcp4", hp(a1.addr, 7000), true) {
		t.Error("rules lost by a repeated AttachInstance")
	}
	var start, v6 string
	err := InNetNS(a1.ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
		start = strings.TrimSpace(string(b))
		if err != nil {
			return err
		}
		b, err = os.ReadFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
		v6 = strings.TrimSpace(string(b))
		if errors.Is(err, os.ErrNotExist) {
			v6, err = "1", nil
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if start != "0" || v6 != "1" {
		t.Errorf("instance sysctls: ip_unprivileged_port_start=%s eth0 disable_ipv6=%s", start, v6)
	}

	for _, bad := range []Attachment{
		{ID: "xyz", Bridge: "ntba", Addr: netip.MustParseAddr("10.233.1.20"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		{ID: "000000a3", Bridge: "ntba", Addr: netip.MustParseAddr("10.233.9.20"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		{ID: "000000a3", Bridge: "ntba", Addr: netip.MustParseAddr("10.233.1.20"), MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}},
	} {
		if _, err := n.AttachInstance(ctx, bad); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("AttachInstance(%+v) = %v, want ErrInvalidArgument", bad, err)
		}
	}
	if _, err := n.AttachInstance(ctx, Attachment{ID: "000000a3", Bridge: "ntbzz", Addr: netip.MustParseAddr("10.233.1.20"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("attach to a missing bridge: %v, want ErrNotFound", err)
	}
	if err := n.SetInstanceRules(ctx, "000000ff", netip.MustParseAddr("10.233.1.30"), nil); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("rules for an unattached instance: %v, want ErrNotFound", err)
	}
	if err := n.SetInstanceRules(ctx, a1.id, netip.MustParseAddr("10.233.1.30"), nil); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("rules with the wrong address: %v, want ErrInvalidArgument", err)
	}
	if err := n.SetBridgeRules(ctx, "ntbzz", nil); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("rules for a missing bridge: %v, want ErrNotFound", err)
	}
	for _, bad := range [][]Allow{
		{{Protocol: compute.ProtocolTCP, Source: netip.MustParsePrefix("10.0.0.0/8")}},
		{{Protocol: compute.ProtocolICMP, Ports: compute.Port(1), Source: netip.MustParsePrefix("10.0.0.0/8")}},
		{{Protocol: compute.ProtocolTCP, Ports: compute.Port(1)}},
		{{Protocol: compute.ProtocolTCP, Ports: compute.Port(1), Source: netip.MustParsePrefix("10.0.0.0/8"), SourceBridge: "ntba"}},
		{{Protocol: compute.ProtocolTCP, Ports: compute.Port(1), Source: netip.MustParsePrefix("10.0.0.1/8")}},
		{{Protocol: "sctp", Source: netip.MustParsePrefix("10.0.0.0/8")}},
	} {
		if err := n.SetInstanceRules(ctx, a1.id, a1.addr, bad); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("SetInstanceRules(%+v) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestNewValidation(t *testing.T) {
	for _, c := range []Config{
		{Prefix: "", Pool: testPool},
		{Prefix: "toolong", Pool: testPool},
		{Prefix: "NT", Pool: testPool},
		{Prefix: "nt", Pool: netip.MustParsePrefix("10.233.0.0/24")},
		{Prefix: "nt", Pool: netip.MustParsePrefix("10.233.0.1/16")},
		{Prefix: "nt", Pool: netip.MustParsePrefix("fd00::/48")},
	} {
		if _, err := New(c); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("New(%+v) = %v, want ErrInvalidArgument", c, err)
		}
	}
	n, err := New(Config{Prefix: "nt", Pool: testPool})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.HostAddr(); got != netip.MustParseAddr("10.233.255.1") {
		t.Errorf("HostAddr = %s", got)
	}
	if got := lastSlash24(netip.MustParsePrefix("10.199.0.0/16")); got != netip.MustParsePrefix("10.199.255.0/24") {
		t.Errorf("lastSlash24 = %s", got)
	}
}

// TestPartialState checks that half-made attachments (a crash between
// steps) are completed by AttachInstance and removed by DetachInstance.
func TestPartialState(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntba", "10.233.1.0/24")

	// Namespace only.
	if _, err := createNetNS(n.instNS("000000c1")); err != nil {
		t.Fatal(err)
	}
	// Full attach whose namespace file then vanished (router veth left).
	attach(t, n, "000000c2", "ntba", "10.233.1.12")
	if err := deleteNetNS(n.instNS("000000c2")); err != nil {
		t.Fatal(err)
	}
	ids, err := n.Instances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ids, ",") != "000000c1,000000c2" {
		t.Errorf("Instances = %v", ids)
	}
	if brs, _ := n.Bridges(ctx); strings.Join(brs, ",") != "ntba" {
		t.Errorf("Bridges = %v", brs)
	}

	// Re-attaching c2 repairs it: new namespace, new veth, reachable.
	c2 := attach(t, n, "000000c2", "ntba", "10.233.1.12")
	serve(t, c2.ns, "0.0.0.0", 7000)
	if err := n.SetInstanceRules(ctx, c2.id, c2.addr, []Allow{tcp(7000, netip.PrefixFrom(n.HostAddr(), 32))}); err != nil {
		t.Fatal(err)
	}
	if !reachable(fromHost(), "tcp4", hp(c2.addr, 7000), true) {
		t.Error("repaired instance unreachable through its rule")
	}
	// Re-attaching with a new address moves its bindings and target.
	c2b := attach(t, n, "000000c2", "ntba", "10.233.1.13")
	objs, _ := n.Objects(ctx)
	for _, o := range objs {
		if strings.Contains(o, "10.233.1.12") {
			t.Errorf("old address still bound after re-attach: %q", o)
		}
	}
	var addrs []string
	if err := InNetNS(c2b.ns, func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		as, err := ifc.Addrs()
		for _, a := range as {
			addrs = append(addrs, a.String())
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(addrs, ",") != "10.233.1.13/24" {
		t.Errorf("eth0 addresses after re-attach: %v", addrs)
	}
	serve(t, c2b.ns, "0.0.0.0", 7001)
	if err := n.SetInstanceRules(ctx, c2b.id, c2b.addr, []Allow{tcp(7001, netip.PrefixFrom(n.HostAddr(), 32))}); err != nil {
		t.Fatal(err)
	}
	if !reachable(fromHost(), "tcp4", hp(c2b.addr, 7001), true) {
		t.Error("moved instance unreachable through its rule")
	}

	// A crash mid-detach left c3's dispatch element (10.233.1.20 -> jump
	// i-000000c3) behind, without its port or namespace; c4 then gets the
	// same address.
	attach(t, n, "000000c3", "ntba", "10.233.1.20")
	r, err := openNS(n.routerNS())
	if err != nil {
		t.Fatal(err)
	}
	if l, err := r.nl.LinkByName(n.instVeth("000000c3")); err == nil {
		r.nl.LinkDel(l)
	}
	r.Close()
	deleteNetNS(n.instNS("000000c3"))
	c, done, err := nftIn(n.routerNS())
	if err != nil {
		t.Fatal(err)
	}
	macs, ips, _ := portElements(c, n.instVeth("000000c3"))
	c.SetDeleteElements(&nftables.Set{Table: asTable(), Name: setPortMAC, KeyType: typeIfnameEther, Concatenation: true}, macs)
	c.SetDeleteElements(&nftables.Set{Table: asTable(), Name: setPortIP, KeyType: typeIfnameIP, Concatenation: true}, ips)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	done()
	if objs, _ := n.Objects(ctx); !slices.Contains(objs, "nft inet compute itargets 10.233.1.20 -> i-000000c3") {
		t.Errorf("stale dispatch element not listed by Objects: %q", objs)
	}
	c4 := attach(t, n, "000000c4", "ntba", "10.233.1.20")
	serve(t, c4.ns, "0.0.0.0", 7002)
	if err := n.SetInstanceRules(ctx, c4.id, c4.addr, []Allow{tcp(7002, netip.PrefixFrom(n.HostAddr(), 32))}); err != nil {
		t.Fatal(err)
	}
	if !reachable(fromHost(), "tcp4", hp(c4.addr, 7002), true) {
		t.Error("instance that took over a stale dispatch address is unreachable through its rule")
	}

	// The same crash with nobody taking the address: detach finds the
	// dispatch element by its chain.
	attach(t, n, "000000c5", "ntba", "10.233.1.21")
	c, done, err = nftIn(n.routerNS())
	if err != nil {
		t.Fatal(err)
	}
	macs, ips, _ = portElements(c, n.instVeth("000000c5"))
	c.SetDeleteElements(&nftables.Set{Table: asTable(), Name: setPortMAC, KeyType: typeIfnameEther, Concatenation: true}, macs)
	c.SetDeleteElements(&nftables.Set{Table: asTable(), Name: setPortIP, KeyType: typeIfnameIP, Concatenation: true}, ips)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	done()
	deleteNetNS(n.instNS("000000c5"))

	for _, id := range []string{"000000c1", "000000c2", "000000c3", "000000c4", "000000c5"} {
		if err := n.DetachInstance(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	objs, err = n.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if strings.Contains(o, "000000c") || strings.Contains(o, "10.233.1.1") {
			t.Errorf("left after detach: %q", o)
		}
	}
	if ids, _ := n.Instances(ctx); len(ids) != 0 {
		t.Errorf("Instances after detach = %v", ids)
	}
}

func TestProbeHost(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	a1 := attach(t, n, "000000a1", "ntba", "10.233.1.11")
	p1, err := n.AttachProbeHost(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := n.AttachProbeHost(ctx, "two")
	if err != nil {
		t.Fatal(err)
	}
	again, err := n.AttachProbeHost(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if again.Addr() != p1.Addr() || p1.Addr() == p2.Addr() {
		t.Errorf("probe addresses: one=%s one again=%s two=%s", p1.Addr(), again.Addr(), p2.Addr())
	}
	last := netip.MustParsePrefix("10.233.255.0/24")
	for _, p := range []*ProbeHost{p1, p2} {
		if !last.Contains(p.Addr()) || netip.PrefixFrom(p.Addr(), 30).Masked() == netip.MustParsePrefix("10.233.255.0/30") {
			t.Errorf("probe address %s not on its own /30 of %s", p.Addr(), last)
		}
	}
	if _, err := n.AttachProbeHost(ctx, "Bad-Name"); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("bad probe name: %v", err)
	}

	// Listen / ListenPacket open sockets inside the probe host.
	l, err := p1.Listen(ctx, "tcp4", ":9200")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	pc, err := p1.ListenPacket(ctx, "udp4", ":9200")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("hi"), from)
		}
	}()
	checkReach(t, []reach{
		{"a1->p1 tcp", fromNS(a1.ns, nil), "tcp4", hp(p1.Addr(), 9200), true},
		{"a1->p1 udp", fromNS(a1.ns, nil), "udp4", hp(p1.Addr(), 9200), true},
		{"p2->p1 tcp (outside to outside)", p2.DialContext, "tcp4", hp(p1.Addr(), 9200), true},
		// The listener is in p1's namespace, not the host's.
		{"host loopback", fromHost(), "tcp4", "127.0.0.1:9200", false},
	})
	raw, err := p1.ListenPacket(ctx, "ip4:icmp", "0.0.0.0")
	if err != nil {
		t.Fatalf("raw icmp socket in probe host: %v", err)
	}
	raw.Close()

	for range 2 {
		if err := p1.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	objs, _ := n.Objects(ctx)
	for _, o := range objs {
		if strings.Contains(o, "one") || strings.Contains(o, "two") {
			t.Errorf("left after probe Close: %q", o)
		}
	}
}
