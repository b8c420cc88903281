package policy

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"go4.org/netipx"
)

// TestCoversPrefix checks the binary search against IPSet.ContainsPrefix.
func TestCoversPrefix(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	randPrefix := func() netip.Prefix {
		if rng.IntN(4) == 0 {
			a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(rng.IntN(4)), 15: byte(rng.IntN(256))})
			return netip.PrefixFrom(a, 112+rng.IntN(17)).Masked()
		}
		a := netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(rng.IntN(256))})
		return netip.PrefixFrom(a, 20+rng.IntN(13)).Masked()
	}
	for round := range 200 {
		var b netipx.IPSetBuilder
		for range rng.IntN(12) {
			b.AddPrefix(randPrefix())
		}
		set, err := b.IPSet()
		if err != nil {
			t.Fatal(err)
		}
		a := allSources{ranges: set.Ranges()}
		for range 200 {
			p := randPrefix()
			if got, want := a.coversPrefix(p), set.ContainsPrefix(p); got != want {
				t.Fatalf("round %d: coversPrefix(%s) = %v, IPSet says %v; set %v", round, p, got, want, set.Prefixes())
			}
		}
	}
	if (allSources{}).coversPrefix(netip.MustParsePrefix("10.0.0.0/8")) {
		t.Error("empty set covers a prefix")
	}
	if (allSources{ranges: []netipx.IPRange{netipx.MustParseIPRange("0.0.0.0-255.255.255.255")}}).coversPrefix(netip.Prefix{}) {
		t.Error("invalid prefix covered")
	}
}
