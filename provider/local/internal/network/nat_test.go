package network

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

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
}
