package network

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/compute-sdk/compute"
)

// BenchmarkSetInstanceRules replaces one instance's five rules while other
// targets hold 10 or 1000 rules. Each target has its own sets, so the cost
// must not grow with the other targets' rules.
func BenchmarkSetInstanceRules(b *testing.B) {
	for _, others := range []int{10, 1000} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			n := newTestNetwork(b)
			ctx := context.Background()
			ensureBridge(b, n, "ntba", "10.233.1.0/24")
			// Ten other instances share the other rules.
			for i := range 10 {
				id := fmt.Sprintf("0000ff%02x", i)
				addr := netip.AddrFrom4([4]byte{10, 233, 1, byte(100 + i)})
				attach(b, n, id, "ntba", addr.String())
				var allows []Allow
				for j := range others / 10 {
					allows = append(allows, Allow{Protocol: compute.ProtocolTCP, Ports: compute.Port(uint16(1000 + j)),
						Source: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(j % 200), byte(j / 200), 0}), 24)})
				}
				if err := n.SetInstanceRules(ctx, id, addr, allows); err != nil {
					b.Fatal(err)
				}
			}
			a := attach(b, n, "000000a1", "ntba", "10.233.1.11")
			sets := [2][]Allow{}
			for k := range sets {
				for j := range 5 {
					sets[k] = append(sets[k], Allow{Protocol: compute.ProtocolTCP, Ports: compute.Port(uint16(2000 + 10*k + j)),
						Source: netip.MustParsePrefix("192.0.2.0/24")})
				}
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := n.SetInstanceRules(ctx, a.id, a.addr, sets[i%2]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAttachDetach measures one instance's network setup and teardown
// (namespace, veth, addresses, sysctls, anti-spoofing elements, rule target).
func BenchmarkAttachDetach(b *testing.B) {
	n := newTestNetwork(b)
	ctx := context.Background()
	ensureBridge(b, n, "ntba", "10.233.1.0/24")
	for b.Loop() {
		a := attach(b, n, "000000a1", "ntba", "10.233.1.11")
		if err := n.DetachInstance(ctx, a.id); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAttach(b *testing.B) {
	n := newTestNetwork(b)
	ctx := context.Background()
	ensureBridge(b, n, "ntba", "10.233.1.0/24")
	for b.Loop() {
		b.StopTimer()
		n.DetachInstance(ctx, "000000a1")
		b.StartTimer()
		attach(b, n, "000000a1", "ntba", "10.233.1.11")
	}
}
