package network

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

// TestRevokeClosesEstablishedFlows: a UDP flow a rule admitted must stop
// when the rule goes, even if its sender never pauses (conntrack would
// otherwise keep it established), and an address reused after detach must
// inherit no flow.
func TestRevokeClosesEstablishedFlows(t *testing.T) {
	n := newTestNetwork(t)
	ctx := context.Background()
	ensureBridge(t, n, "ntbc", "10.233.3.0/24")
	a := attach(t, n, "000000c1", "ntbc", "10.233.3.11")
	serve(t, a.ns, "0.0.0.0", 9100)
	host := netip.PrefixFrom(n.HostAddr(), 32)
	if err := n.SetInstanceRules(ctx, a.id, a.addr, []Allow{{Protocol: compute.ProtocolUDP, Ports: compute.Port(9100), Source: host}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp4", hp(a.addr, 9100))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(wait time.Duration) bool {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte("ping")); err != nil {
			return false
		}
		buf := make([]byte, 8)
		k, _ := c.Read(buf)
		return string(buf[:k]) == "hi"
	}
	if !echo(longWait) {
		t.Fatal("allowed UDP flow got no answer; the test is broken")
	}
	if err := n.SetInstanceRules(ctx, a.id, a.addr, nil); err != nil {
		t.Fatal(err)
	}
	if echo(shortWait) {
		t.Error("an established UDP flow still passes after its rule was revoked")
	}

	// Allowed again, then the instance goes and a new one takes its
	// address with no rule: the old flow must not reach it.
	if err := n.SetInstanceRules(ctx, a.id, a.addr, []Allow{{Protocol: compute.ProtocolUDP, Ports: compute.Port(9100), Source: host}}); err != nil {
		t.Fatal(err)
	}
	if !echo(longWait) {
		t.Fatal("re-allowed UDP flow got no answer")
	}
	if err := n.DetachInstance(ctx, a.id); err != nil {
		t.Fatal(err)
	}
	b := attach(t, n, "000000c2", "ntbc", "10.233.3.11")
	serve(t, b.ns, "0.0.0.0", 9100)
	if echo(shortWait) {
		t.Error("a new instance on a reused address answered an old flow it has no rule for")
	}
	if err := n.DetachInstance(ctx, b.id); err != nil {
		t.Fatal(err)
	}
}
