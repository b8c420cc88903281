package policy_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

// benchRules makes n rules shaped like a large real policy: mostly single
// ports and small ranges from /24s and hosts of a few networks, some
// cluster sources, a few icmp and all rules. The seed is fixed so runs
// compare.
func benchRules(n int) []compute.RuleSpec {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	common := []uint16{22, 80, 443, 5432, 6379, 8080, 8443, 9090}
	rules := make([]compute.RuleSpec, 0, n)
	for range n {
		r := compute.RuleSpec{Protocol: "tcp"}
		switch x := rng.IntN(100); {
		case x < 15:
			r.Protocol = "udp"
		case x < 17:
			r.Protocol = "icmp"
		case x < 18:
			r.Protocol = "all"
		}
		if r.Protocol.HasPorts() {
			if rng.IntN(3) == 0 {
				from := uint16(1024 + rng.IntN(60000))
				r.Ports = compute.Ports(from, from+uint16(rng.IntN(100)))
			} else {
				r.Ports = compute.Port(common[rng.IntN(len(common))])
			}
		}
		for k := 1 + rng.IntN(3); k > 0; k-- {
			switch x := rng.IntN(10); {
			case x == 0:
				r.SourceClusters = append(r.SourceClusters, fmt.Sprintf("c%d", rng.IntN(50)))
			case x < 4:
				a := netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), 0})
				r.SourceCIDRs = append(r.SourceCIDRs, netip.PrefixFrom(a, 24))
			default:
				a := netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(64)), byte(rng.IntN(256))})
				r.SourceCIDRs = append(r.SourceCIDRs, netip.PrefixFrom(a, 32))
			}
		}
		rules = append(rules, r)
	}
	return rules
}

func benchCompile(b *testing.B, n int) {
	rules := benchRules(n)
	b.ReportAllocs()
	var entries int
	for b.Loop() {
		entries = len(policy.Compile(rules))
	}
	b.ReportMetric(float64(entries), "entries")
}

func BenchmarkCompile100(b *testing.B) { benchCompile(b, 100) }
func BenchmarkCompile10k(b *testing.B) { benchCompile(b, 10_000) }

func benchDiff(b *testing.B, n int) {
	target := compute.ClusterTarget("bench")
	all := benchRules(n + n/10)
	current, err := policy.NewRules(target, all[:n])
	if err != nil {
		b.Fatal(err)
	}
	// Desired drops the first tenth and adds a tenth of new rules.
	desired, err := policy.NewRules(target, all[n/10:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var changes int
	for b.Loop() {
		add, revoke := policy.Diff(current, desired)
		changes = len(add) + len(revoke)
	}
	b.ReportMetric(float64(changes), "changes")
}

func BenchmarkDiff100(b *testing.B) { benchDiff(b, 100) }
func BenchmarkDiff10k(b *testing.B) { benchDiff(b, 10_000) }

// BenchmarkNewRules10k is what a SetRules call pays before diffing:
// validation, canonical form and IDs for every desired rule.
func BenchmarkNewRules10k(b *testing.B) {
	rules := benchRules(10_000)
	target := compute.ClusterTarget("bench")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := policy.NewRules(target, rules); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBenchRulesAreValid(t *testing.T) {
	if err := policy.ValidateRules("rules", benchRules(10_000)); err != nil {
		t.Fatal(err)
	}
}
