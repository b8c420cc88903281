package policy_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

// refAllows is the reference meaning of a rule list, written independently
// of the package: does some rule admit pkt?
func refAllows(rules []compute.RuleSpec, pkt policy.Packet) bool {
	for _, r := range rules {
		if r.Protocol != compute.ProtocolAll {
			if r.Protocol != pkt.Protocol {
				continue
			}
			if (r.Protocol == "tcp" || r.Protocol == "udp") && (pkt.Port < r.Ports.From || pkt.Port > r.Ports.To) {
				continue
			}
		}
		for _, c := range r.SourceClusters {
			if pkt.SrcCluster != "" && c == pkt.SrcCluster {
				return true
			}
		}
		for _, p := range r.SourceCIDRs {
			if p.Contains(pkt.Src) {
				return true
			}
		}
	}
	return false
}

func entriesAllow(es []policy.Entry, pkt policy.Packet) bool {
	for _, e := range es {
		if e.Allows(pkt) {
			return true
		}
	}
	return false
}

func parseAll(t testing.TB, ss ...string) []compute.RuleSpec {
	t.Helper()
	var out []compute.RuleSpec
	for _, s := range ss {
		r, err := policy.Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		out = append(out, r)
	}
	return out
}

func formatAll(rs []compute.RuleSpec) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, policy.Format(r))
	}
	return out
}

func TestNormalize(t *testing.T) {
	cases := []struct {
		name string
		in   []string
		want []string
	}{
		{"empty", nil, []string{}},
		{"one rule unchanged", []string{"tcp:22 from 192.0.2.7 # ssh"}, []string{"tcp:22 from 192.0.2.7 # ssh"}},
		{"same ports: sources union",
			[]string{"tcp:22 from 10.0.0.0/9", "tcp:22 from 10.128.0.0/9,cluster:b", "tcp:22 from cluster:a"},
			[]string{"tcp:22 from 10.0.0.0/8,cluster:a,cluster:b"}},
		{"same sources: overlapping and adjacent ranges merge",
			[]string{"tcp:80-90 from 10.0.0.0/8", "tcp:85-100 from 10.0.0.0/8", "tcp:101 from 10.0.0.0/8", "tcp:103 from 10.0.0.0/8"},
			[]string{"tcp:80-101 from 10.0.0.0/8", "tcp:103 from 10.0.0.0/8"}},
		{"different protocols stay apart",
			[]string{"udp:53 from 10.0.0.0/8", "tcp:53 from 10.0.0.0/8"},
			[]string{"tcp:53 from 10.0.0.0/8", "udp:53 from 10.0.0.0/8"}},
		{"overlapping sources with different ports do not merge",
			[]string{"tcp:80 from 10.0.0.0/8", "tcp:81 from 10.0.0.0/16"},
			[]string{"tcp:80 from 10.0.0.0/8", "tcp:81 from 10.0.0.0/16"}},
		{"chained merges reach a fixed point",
			// 80 from A and 80 from B give 80 from A+B, which then merges
			// with 81 from A+B.
			[]string{"tcp:80 from 10.0.0.0/9", "tcp:80 from 10.128.0.0/9", "tcp:81 from 10.0.0.0/8"},
			[]string{"tcp:80-81 from 10.0.0.0/8"}},
		{"all subsumes what it covers",
			[]string{"all from 10.0.0.0/8,cluster:a", "tcp:22 from 10.1.0.0/16,192.0.2.0/24,cluster:a,cluster:b", "icmp from 10.0.0.0/8"},
			[]string{"tcp:22 from 192.0.2.0/24,cluster:b", "all from 10.0.0.0/8,cluster:a"}},
		{"all does not subsume what it only partly covers",
			[]string{"all from 10.0.0.0/9", "udp:53 from 10.0.0.0/8"},
			[]string{"udp:53 from 10.0.0.0/8", "all from 10.0.0.0/9"}},
		{"icmp rules merge",
			[]string{"icmp from 10.0.0.0/8", "icmp from 192.0.2.0/24", "icmpv6 from ::/0"},
			[]string{"icmp from 10.0.0.0/8,192.0.2.0/24", "icmpv6 from ::/0"}},
		{"differing descriptions are dropped when merged",
			[]string{"tcp:22 from 10.0.0.0/9 # a", "tcp:22 from 10.128.0.0/9 # b", "tcp:443 from 10.0.0.0/9 # c", "tcp:443 from 10.0.0.0/9 # c"},
			[]string{"tcp:22 from 10.0.0.0/8", "tcp:443 from 10.0.0.0/9 # c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := parseAll(t, tc.in...)
			got := policy.Normalize(in)
			if f := formatAll(got); !reflect.DeepEqual(f, tc.want) {
				t.Errorf("Normalize =\n  %q\nwant\n  %q", f, tc.want)
			}
			if again := policy.Normalize(got); !reflect.DeepEqual(again, got) {
				t.Errorf("Normalize is not idempotent: %q", formatAll(again))
			}
			checkEquivalent(t, in, got, policy.Compile(in))
		})
	}
}

func TestNormalizeDropsSourcelessRules(t *testing.T) {
	in := []compute.RuleSpec{{Protocol: "tcp", Ports: compute.Port(22)}}
	if got := policy.Normalize(in); len(got) != 0 {
		t.Errorf("Normalize kept a rule with no sources: %+v", got)
	}
}

func TestCompile(t *testing.T) {
	cases := []struct {
		name string
		in   []string
		want []string
	}{
		{"empty", nil, []string{}},
		{"one entry per source",
			[]string{"tcp:22 from 192.0.2.7,2001:db8::/32,cluster:a"},
			[]string{"tcp:22 from 192.0.2.7", "tcp:22 from 2001:db8::/32", "tcp:22 from cluster:a"}},
		{"per-source port merge that rules cannot express",
			// As rules these cannot merge (different source sets); as
			// entries, 10/8 gets one range.
			[]string{"tcp:80 from 10.0.0.0/8,192.0.2.0/24", "tcp:81 from 10.0.0.0/8"},
			[]string{"tcp:80 from 192.0.2.0/24", "tcp:80-81 from 10.0.0.0/8"}},
		{"narrower entry inside a wider one disappears",
			[]string{"tcp:1-1000 from 10.0.0.0/8", "tcp:22 from 10.1.2.3"},
			[]string{"tcp:1-1000 from 10.0.0.0/8"}},
		{"all covers a narrower protocol",
			[]string{"all from 0.0.0.0/0", "tcp:22 from 192.0.2.7", "icmp from 10.0.0.0/8", "tcp:22 from ::/0"},
			[]string{"tcp:22 from ::/0", "all from 0.0.0.0/0"}},
		{"wider ports but narrower prefix keeps both",
			[]string{"tcp:1-1000 from 10.1.0.0/16", "tcp:22 from 10.0.0.0/8"},
			[]string{"tcp:1-1000 from 10.1.0.0/16", "tcp:22 from 10.0.0.0/8"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := parseAll(t, tc.in...)
			es := policy.Compile(in)
			got := []string{}
			for _, e := range es {
				got = append(got, e.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Compile =\n  %q\nwant\n  %q", got, tc.want)
			}
			checkEquivalent(t, in, policy.Normalize(in), es)
		})
	}
}

func TestCompact(t *testing.T) {
	in := parseAll(t, "tcp:22 from 192.0.2.7,198.51.100.0/24", "tcp:23 from 192.0.2.7", "udp:53 from cluster:a")
	// 192.0.2.7 gets 22-23, 198.51.100.0/24 gets 22, cluster a gets udp 53.
	es, err := policy.Compact(in, 3)
	if err != nil || len(es) != 3 {
		t.Fatalf("Compact(limit 3) = %d entries, %v", len(es), err)
	}
	if es, err := policy.Compact(in, 0); err != nil || len(es) != 3 {
		t.Fatalf("Compact(no limit) = %d entries, %v", len(es), err)
	}
	_, err = policy.Compact(in, 2)
	if !errors.Is(err, compute.ErrQuota) {
		t.Fatalf("Compact(limit 2) error = %v, want ErrQuota", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "3") || !strings.Contains(msg, "2") {
		t.Errorf("ErrQuota message %q does not say needed and limit", msg)
	}
	// 60 disjoint /32s cannot merge: at an AWS-like limit of 60 they fit,
	// at 59 they do not, and Compact never widens a source to make them.
	var many []compute.RuleSpec
	for i := range 60 {
		many = append(many, compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22),
			SourceCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 1}), 32)}})
	}
	if es, err := policy.Compact(many, 60); err != nil || len(es) != 60 {
		t.Fatalf("Compact(60 hosts, 60) = %d, %v", len(es), err)
	}
	if _, err := policy.Compact(many, 59); !errors.Is(err, compute.ErrQuota) {
		t.Fatalf("Compact(60 hosts, 59) = %v, want ErrQuota", err)
	}
	// 256 adjacent /32s merge losslessly into one /24 and fit in 1.
	var block []compute.RuleSpec
	for i := range 256 {
		block = append(block, compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22),
			SourceCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)}})
	}
	es, err = policy.Compact(block, 1)
	if err != nil || len(es) != 1 || es[0].Source != pfx("10.0.0.0/24") {
		t.Fatalf("Compact(256 adjacent hosts, 1) = %v, %v", es, err)
	}
}

// checkEquivalent checks that in, its normal form and its entries admit
// exactly the same packets, on every boundary the rules have and around it.
func checkEquivalent(t testing.TB, in, norm []compute.RuleSpec, es []policy.Entry) {
	t.Helper()
	for _, pkt := range probePackets(in, nil) {
		want := refAllows(in, pkt)
		if got := refAllows(norm, pkt); got != want {
			t.Fatalf("%+v: input allows=%v, Normalize allows=%v\ninput: %q\nnormalized: %q", pkt, want, got, formatAll(in), formatAll(norm))
		}
		if got := entriesAllow(es, pkt); got != want {
			t.Fatalf("%+v: input allows=%v, Compile allows=%v\ninput: %q\nentries: %v", pkt, want, got, formatAll(in), es)
		}
	}
}

var probeProtocols = []compute.Protocol{"tcp", "udp", "icmp", "icmpv6", "gre"}

// probePackets returns packets on and around every port and address
// boundary of rules, for every protocol (gre stands for the protocols only
// "all" admits), from every cluster the rules name and one they do not,
// plus extra addresses and ports.
func probePackets(rules []compute.RuleSpec, extra []netip.Addr, extraPorts ...uint16) []policy.Packet {
	ports := map[uint16]bool{0: true, 1: true, 65535: true}
	for _, p := range extraPorts {
		ports[p] = true
	}
	addrs := map[netip.Addr]bool{
		netip.MustParseAddr("0.0.0.0"): true, netip.MustParseAddr("255.255.255.255"): true,
		netip.MustParseAddr("::"): true, netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"): true,
	}
	for _, a := range extra {
		addrs[a] = true
	}
	clusters := map[string]bool{"": true, "not-named": true}
	for _, r := range rules {
		for _, p := range []uint16{r.Ports.From, r.Ports.To} {
			ports[p] = true
			ports[p-1] = true // wraps at 0: harmless, one more probe
			ports[p+1] = true
		}
		for _, p := range r.SourceCIDRs {
			first, last := p.Masked().Addr(), lastAddr(p)
			for _, a := range []netip.Addr{first, last, first.Prev(), last.Next()} {
				if a.IsValid() {
					addrs[a] = true
				}
			}
		}
		for _, c := range r.SourceClusters {
			clusters[c] = true
		}
	}
	var pkts []policy.Packet
	for _, proto := range probeProtocols {
		pp := []uint16{0}
		if proto == "tcp" || proto == "udp" {
			pp = pp[:0]
			for p := range ports {
				pp = append(pp, p)
			}
		}
		for _, port := range pp {
			for a := range addrs {
				pkts = append(pkts, policy.Packet{Protocol: proto, Port: port, Src: a})
			}
			for c := range clusters {
				// From an address no rule in these tests names.
				pkts = append(pkts, policy.Packet{Protocol: proto, Port: port, Src: netip.MustParseAddr("203.0.113.9"), SrcCluster: c})
			}
		}
	}
	return pkts
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range a {
		for b := 0; b < 8; b++ {
			if i*8+b >= bits {
				a[i] |= 0x80 >> b
			}
		}
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{"10.0.0.0/8": "10.255.255.255", "0.0.0.0/0": "255.255.255.255", "192.0.2.7/32": "192.0.2.7", "2001:db8::/33": "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff"} {
		if got := lastAddr(pfx(in)); got.String() != want {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func ExampleCompile() {
	rules := []compute.RuleSpec{
		{Protocol: "tcp", Ports: compute.Port(443), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/9")}},
		{Protocol: "tcp", Ports: compute.Port(443), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.128.0.0/9")}},
		{Protocol: "tcp", Ports: compute.Port(444), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{Protocol: "udp", Ports: compute.Port(53), SourceClusters: []string{"dns"}},
	}
	for _, e := range policy.Compile(rules) {
		fmt.Println(e)
	}
	// Output:
	// tcp:443-444 from 10.0.0.0/8
	// udp:53 from cluster:dns
}
