package policy_test

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32",
		"tcp:22 from 192.0.2.7",
		"tcp:22 from 2001:db8::1 # ssh",
		"udp:53 from cluster:train",
		"icmp from 0.0.0.0/0",
		"icmpv6 from ::/0",
		"all from cluster:a,192.168.0.0/16",
		"tcp:1-65535 from 10.0.0.0/9, 10.128.0.0/9 #  x # y ",
		"tcp:0 from 10.0.0.0/8",
		"tcp:22 from 10.0.0.1/33",
		"tcp:22 from ::/129",
		"tcp:22 from 10.0.0.1/8",
		"icmp:8 from 0.0.0.0/0",
		"tcp:22 from ::ffff:1.2.3.4",
		"tcp:22 from cluster:",
		"",
		"#",
		"tcp:22 from 1.2.3.4 # \x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := policy.Parse(s)
		if err != nil {
			if fieldOf(err) == "" {
				t.Fatalf("Parse(%q) error %q names no field", s, err)
			}
			return
		}
		if err := policy.ValidateRule(r); err != nil {
			t.Fatalf("Parse(%q) = %+v, which does not validate: %v", s, r, err)
		}
		if c := policy.Canonical(r); !reflect.DeepEqual(c, r) {
			t.Fatalf("Parse(%q) = %+v, not canonical (%+v)", s, r, c)
		}
		out := policy.Format(r)
		again, err := policy.Parse(out)
		if err != nil {
			t.Fatalf("Parse(Format(Parse(%q))) = Parse(%q): %v", s, out, err)
		}
		if !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip of %q via %q: got %+v, want %+v", s, out, again, r)
		}
	})
}

// fuzzRules decodes bytes into a few valid rules over a small space of
// ports, addresses and clusters, so that overlaps, adjacency and
// containment are common.
func fuzzRules(data []byte) []compute.RuleSpec {
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	protos := []compute.Protocol{"tcp", "udp", "tcp", "udp", "icmp", "icmpv6", "all"}
	clusters := []string{"a", "b", "c"}
	n := 1 + int(next())%8
	var rules []compute.RuleSpec
	for range n {
		r := compute.RuleSpec{Protocol: protos[int(next())%len(protos)]}
		if r.Protocol.HasPorts() {
			// Ports 1-24 and 65520-65535, so the top boundary is hit too.
			from := uint16(1 + next()%24)
			if next()%5 == 0 {
				from = 65520 + uint16(next()%16)
			}
			to := from + uint16(next()%6)
			if to < from {
				to = 65535
			}
			r.Ports = compute.Ports(from, to)
		}
		for k := 1 + int(next())%3; k > 0; k-- {
			b := next()
			switch {
			case b%5 == 0:
				r.SourceClusters = append(r.SourceClusters, clusters[int(next())%len(clusters)])
			case r.Protocol == "icmpv6" || (r.Protocol != "icmp" && b%5 == 1):
				// 2001:db8::XX/120..128
				a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: next()})
				r.SourceCIDRs = append(r.SourceCIDRs, netip.PrefixFrom(a, 120+int(next())%9).Masked())
			case b%17 == 2:
				r.SourceCIDRs = append(r.SourceCIDRs, netip.MustParsePrefix("0.0.0.0/0"))
			default:
				// 10.0.X.Y/22..32 within 10.0.0.0/22
				a := netip.AddrFrom4([4]byte{10, 0, next() % 4, next()})
				r.SourceCIDRs = append(r.SourceCIDRs, netip.PrefixFrom(a, 22+int(next())%11).Masked())
			}
		}
		rules = append(rules, r)
	}
	return rules
}

func FuzzNormalize(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{3, 0, 5, 0, 1, 10, 1, 2, 3, 0, 10, 2, 0, 7, 0, 3, 1})
	f.Add([]byte{7, 6, 2, 5, 1, 0, 0, 2, 6, 0, 0, 4, 2, 200, 0, 0, 3, 1, 0, 0})
	f.Add([]byte("all from 10/8 and tcp 1-5 from 10.0.1/24 and udp from cluster b"))
	seed := make([]byte, 64)
	for i := range seed {
		seed[i] = byte(i * 37)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		in := fuzzRules(data)
		for i, r := range in {
			if err := policy.ValidateRule(r); err != nil {
				t.Fatalf("decoder made invalid rule %d %+v: %v", i, r, err)
			}
		}
		norm := policy.Normalize(in)
		if again := policy.Normalize(norm); !reflect.DeepEqual(again, norm) {
			t.Fatalf("Normalize not idempotent:\n in: %q\n 1st: %q\n 2nd: %q", formatAll(in), formatAll(norm), formatAll(again))
		}
		for i, r := range norm {
			if err := policy.ValidateRule(r); err != nil {
				t.Fatalf("Normalize made invalid rule %d %q: %v", i, policy.Format(r), err)
			}
		}
		es := policy.Compile(in)
		if again := policy.Compile(norm); !reflect.DeepEqual(again, es) {
			t.Fatalf("Compile(Normalize(x)) != Compile(x):\n %v\n %v", again, es)
		}
		// Random addresses and ports on top of every rule boundary.
		var seed [32]byte
		copy(seed[:], data)
		rng := rand.New(rand.NewChaCha8(seed))
		var extra []netip.Addr
		var extraPorts []uint16
		for range 32 {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], rng.Uint32())
			b[0], b[1], b[2] = 10, 0, b[2]%4
			extra = append(extra, netip.AddrFrom4(b), netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.Uint32())}))
			extraPorts = append(extraPorts, uint16(rng.Uint32()))
		}
		for _, pkt := range probePackets(in, extra, extraPorts...) {
			want := refAllows(in, pkt)
			if got := refAllows(norm, pkt); got != want {
				t.Fatalf("%+v: input allows=%v, Normalize allows=%v\n in: %q\n normalized: %q", pkt, want, got, formatAll(in), formatAll(norm))
			}
			if got := entriesAllow(es, pkt); got != want {
				t.Fatalf("%+v: input allows=%v, Compile allows=%v\n in: %q\n entries: %v", pkt, want, got, formatAll(in), es)
			}
			p := policy.Policy{Rules: norm}
			if got := p.Allows(pkt); got != want {
				t.Fatalf("%+v: input allows=%v, Policy.Allows=%v", pkt, want, got)
			}
		}
	})
}

func fieldOf(err error) string {
	if fe, ok := err.(*compute.FieldError); ok {
		return fe.Field
	}
	return ""
}
