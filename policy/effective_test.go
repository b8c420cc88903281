package policy_test

import (
	"net/netip"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func TestEffective(t *testing.T) {
	web := compute.Instance{ID: "i-0000000a", Name: "web", Cluster: "train"}
	loner := compute.Instance{ID: "i-0000000b", Name: "loner"}
	var rules []compute.FirewallRule
	rules = append(rules, mustRules(t, compute.InstanceTarget(web.ID), "tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32", "tcp:22 from 192.0.2.7")...)
	rules = append(rules, mustRules(t, compute.ClusterTarget("train"), "udp:53 from cluster:infer", "icmp from 198.51.100.0/24")...)
	rules = append(rules, mustRules(t, compute.InstanceTarget(loner.ID), "all from cluster:infer")...)
	rules = append(rules, mustRules(t, compute.ClusterTarget("infer"), "tcp:1-65535 from 0.0.0.0/0")...)
	// A cluster target named like an instance ID must not leak into it.
	rules = append(rules, mustRules(t, compute.ClusterTarget(web.ID), "tcp:9999 from 0.0.0.0/0")...)

	a := netip.MustParseAddr
	cases := []struct {
		name string
		inst compute.Instance
		pkt  policy.Packet
		want bool
	}{
		{"default deny tcp", web, policy.Packet{Protocol: "tcp", Port: 4444, Src: a("203.0.113.1")}, false},
		{"default deny udp", web, policy.Packet{Protocol: "udp", Port: 4444, Src: a("203.0.113.1")}, false},
		{"default deny icmp", web, policy.Packet{Protocol: "icmp", Src: a("203.0.113.1")}, false},
		{"ssh closed to others", web, policy.Packet{Protocol: "tcp", Port: 22, Src: a("192.0.2.8")}, false},
		{"ssh open to the rule's source", web, policy.Packet{Protocol: "tcp", Port: 22, Src: a("192.0.2.7")}, true},
		{"instance rule range low", web, policy.Packet{Protocol: "tcp", Port: 8080, Src: a("10.9.9.9")}, true},
		{"instance rule range high", web, policy.Packet{Protocol: "tcp", Port: 8090, Src: a("10.9.9.9")}, true},
		{"neighbouring port", web, policy.Packet{Protocol: "tcp", Port: 8091, Src: a("10.9.9.9")}, false},
		{"wrong protocol", web, policy.Packet{Protocol: "udp", Port: 8080, Src: a("10.9.9.9")}, false},
		{"ipv6 source", web, policy.Packet{Protocol: "tcp", Port: 8085, Src: a("2001:db8::5")}, true},
		{"ipv6 outside", web, policy.Packet{Protocol: "tcp", Port: 8085, Src: a("2001:db9::5")}, false},
		{"ipv4-mapped sender is its ipv4 address", web, policy.Packet{Protocol: "tcp", Port: 22, Src: a("::ffff:192.0.2.7")}, true},
		{"cluster peer tcp", web, policy.Packet{Protocol: "tcp", Port: 4444, Src: a("10.199.0.3"), SrcCluster: "train"}, true},
		{"cluster peer udp", web, policy.Packet{Protocol: "udp", Port: 1, Src: a("10.199.0.3"), SrcCluster: "train"}, true},
		{"cluster peer icmp", web, policy.Packet{Protocol: "icmp", Src: a("10.199.0.3"), SrcCluster: "train"}, true},
		{"other cluster denied", web, policy.Packet{Protocol: "tcp", Port: 4444, Src: a("10.199.1.3"), SrcCluster: "other"}, false},
		{"cluster rule from source cluster", web, policy.Packet{Protocol: "udp", Port: 53, Src: a("10.199.1.3"), SrcCluster: "infer"}, true},
		{"cluster rule other port", web, policy.Packet{Protocol: "udp", Port: 54, SrcCluster: "infer"}, false},
		{"cluster rule icmp", web, policy.Packet{Protocol: "icmp", Src: a("198.51.100.9")}, true},
		{"cidr matches members of other clusters", web, policy.Packet{Protocol: "tcp", Port: 8080, Src: a("10.199.1.3"), SrcCluster: "other"}, true},
		{"rules of other targets ignored", web, policy.Packet{Protocol: "tcp", Port: 9999, Src: a("203.0.113.1")}, false},
		{"loner default deny", loner, policy.Packet{Protocol: "tcp", Port: 22, Src: a("192.0.2.7")}, false},
		{"loner has no peers", loner, policy.Packet{Protocol: "tcp", Port: 22, Src: a("10.199.0.3"), SrcCluster: ""}, false},
		{"loner all from cluster", loner, policy.Packet{Protocol: "gre", SrcCluster: "infer"}, true},
		{"loner all from cluster, other cluster", loner, policy.Packet{Protocol: "icmp", SrcCluster: "train"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := policy.Effective(tc.inst, rules)
			if got := p.Allows(tc.pkt); got != tc.want {
				t.Errorf("Allows(%+v) = %v, want %v; rules %q", tc.pkt, got, tc.want, formatAll(p.Rules))
			}
		})
	}

	p := policy.Effective(web, rules)
	if p.Instance != web.ID || p.Cluster != "train" || len(p.Rules) != 4 {
		t.Errorf("Effective(web) = %+v, want 4 rules of instance and cluster", p)
	}
	if p := policy.Effective(compute.Instance{ID: "i-none"}, rules); len(p.Rules) != 0 {
		t.Errorf("instance without rules got %q", formatAll(p.Rules))
	}
}
