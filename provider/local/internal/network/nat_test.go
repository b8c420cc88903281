package network

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

// TestEgressNAT plays the host in a namespace of its own ("ntx-host", with
// an uplink to "ntx-wan", standing in for the internet), so the test may
// turn on forwarding and NAT there without touching the real host.
func TestEgressNAT(t *testing.T) {
	requireNetAdmin(t)
	ctx := context.Background()
	hostPath, wanPath := nsPath("ntx-host"), nsPath("ntx-wan")
	for _, p := range []string{hostPath, wanPath} {
		if _, err := createNetNS(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteNetNS(p) })
	}
	h, err := openNS(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	w, err := openNS(wanPath)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := h.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "wan0",
		PeerNamespace: netlink.NsFd(int(w.ns))}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		h    *nsHandle
		addr string
	}{{h, "198.51.100.1/24"}, {w, "198.51.100.2/24"}} {
		for _, name := range []string{"lo", "wan0"} {
			l, err := s.h.nl.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if name == "wan0" {
				if err := s.h.nl.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix(s.addr))}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.h.nl.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}

	n, err := New(Config{Prefix: testPrefix, Pool: testPool, EgressNAT: true})
	if err != nil {
		t.Fatal(err)
	}
	n.hostNS = hostPath
	t.Cleanup(func() {
		if err := n.Teardown(ctx); err != nil {
			t.Error(err)
		}
		if objs, err := n.Objects(ctx); err != nil || len(objs) != 0 {
			t.Errorf("after teardown: %q, %v", objs, err)
		}
	})
	if err := n.EnsureRouter(ctx); err != nil {
		t.Fatal(err)
	}
	ensureBridge(t, n, "ntba", "10.233.1.0/24")
	a1 := attach(t, n, "000000a1", "ntba", "10.233.1.11")

	var fwd []byte
	if err := InNetNS(hostPath, func() error {
		var err error
		fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(fwd)) != "1" {
		t.Errorf("host ip_forward = %q with EgressNAT", fwd)
	}

	// The "internet" records who connects.
	var l net.Listener
	if err := InNetNS(wanPath, func() error {
		var err error
		l, err = net.Listen("tcp4", "198.51.100.2:9000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Write([]byte("hi"))
		c.Close()
	}()
	if !reachable(fromNS(a1.ns, nil), "tcp4", "198.51.100.2:9000", true) {
		t.Fatal("instance cannot reach the outside through EgressNAT")
	}
	select {
	case src := <-seen:
		if src != "198.51.100.1" {
			t.Errorf("outside saw source %s, want the host's uplink address 198.51.100.1", src)
		}
	case <-time.After(time.Second):
		t.Error("listener saw no connection")
	}

	// The host's other addresses are the host too: closed to instances.
	serve(t, hostPath, "198.51.100.1", 9001)
	if reachable(fromNS(a1.ns, nil), "tcp4", "198.51.100.1:9001", false) {
		t.Error("instance reached a listener on the host's uplink address")
	}
	if !reachable(fromNS(hostPath, nil), "tcp4", "198.51.100.1:9001", true) {
		t.Fatal("host listener not answering locally; the test is broken")
	}

	// A container behind the host's own masquerade (Docker's shape:
	// -s 172.30.0.0/24 ! -o ctr0 -j MASQUERADE) must not pass a rule
	// that admits "the calling host": its connections would leave with
	// the host's link address.
	ctrPath := nsPath("ntx-ctr")
	if _, err := createNetNS(ctrPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetNS(ctrPath) })
	ctr, err := openNS(ctrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	if err := h.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ctr0"}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(ctr.ns))}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		h    *nsHandle
		link string
		addr string
	}{{h, "ctr0", "172.30.0.1/24"}, {ctr, "eth0", "172.30.0.2/24"}, {ctr, "lo", ""}} {
		l, err := s.h.nl.LinkByName(s.link)
		if err != nil {
			t.Fatal(err)
		}
		if s.addr != "" {
			if err := s.h.nl.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix(s.addr))}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.h.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := ctr.nl.RouteAdd(&netlink.Route{Gw: net.ParseIP("172.30.0.1")}); err != nil {
		t.Fatal(err)
	}
	hc, done, err := nftIn(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	dt := hc.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "dockerlike"})
	accept := nftables.ChainPolicyAccept
	dpost := hc.AddChain(&nftables.Chain{Name: "post", Table: dt, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	hc.AddRule(&nftables.Rule{Table: dt, Chain: dpost, Exprs: exprs(
		ipSaddr(1),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(24, 32), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{172, 30, 0, 0}},
		metaLoad(expr.MetaKeyOIFNAME, 1),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname("ctr0")},
		&expr.Masq{})})
	if err := hc.Flush(); err != nil {
		t.Fatal(err)
	}
	serve(t, a1.ns, "0.0.0.0", 9002)
	hostOnly := netip.PrefixFrom(n.HostAddr(), 32)
	if err := n.SetInstanceRules(ctx, a1.id, a1.addr, []Allow{tcp(9002, hostOnly)}); err != nil {
		t.Fatal(err)
	}
	if !reachable(fromNS(hostPath, nil), "tcp4", hp(a1.addr, 9002), true) {
		t.Fatal("the host itself cannot use its rule; the test is broken")
	}
	if reachable(fromNS(ctrPath, nil), "tcp4", hp(a1.addr, 9002), false) {
		t.Error("a container masqueraded by the host passed the rule for the host's own address")
	}
}
