package network

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestDisjoint(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	rangeIn := func(max uint32) [2]uint32 {
		a, b := rng.Uint32N(max), rng.Uint32N(max)
		if a > b {
			a, b = b, a
		}
		return [2]uint32{a, b}
	}
	for iter := range 300 {
		var in []box
		for range 1 + rng.IntN(8) {
			bx := box{dim: [3][2]uint32{rangeIn(16), rangeIn(4), rangeIn(16)}}
			if rng.IntN(4) == 0 {
				bx.group = "g"
			}
			in = append(in, bx)
		}
		out := disjoint(in)
		for i := range out {
			for j := i + 1; j < len(out); j++ {
				if out[i].overlaps(out[j]) {
					t.Fatalf("iter %d: %v and %v overlap", iter, out[i], out[j])
				}
			}
		}
		contains := func(bs []box, g string, p [3]uint32) bool {
			for _, b := range bs {
				if b.group != g {
					continue
				}
				in := true
				for d := range p {
					in = in && b.dim[d][0] <= p[d] && p[d] <= b.dim[d][1]
				}
				if in {
					return true
				}
			}
			return false
		}
		for _, g := range []string{"", "g"} {
			for x := range uint32(16) {
				for y := range uint32(4) {
					for z := range uint32(16) {
						p := [3]uint32{x, y, z}
						if contains(in, g, p) != contains(out, g, p) {
							t.Fatalf("iter %d: point %v group %q: input %v, output %v", iter, p, g, contains(in, g, p), contains(out, g, p))
						}
					}
				}
			}
		}
	}
}

func TestPrefixRange(t *testing.T) {
	for _, c := range []struct{ p, first, last string }{
		{"10.0.0.0/8", "10.0.0.0", "10.255.255.255"},
		{"10.233.255.1/32", "10.233.255.1", "10.233.255.1"},
		{"0.0.0.0/0", "0.0.0.0", "255.255.255.255"},
	} {
		f, l := prefixRange(netip.MustParsePrefix(c.p))
		if netip.AddrFrom4(f).String() != c.first || netip.AddrFrom4(l).String() != c.last {
			t.Errorf("prefixRange(%s) = %v-%v", c.p, netip.AddrFrom4(f), netip.AddrFrom4(l))
		}
	}
}
