package policy_test

import (
	"fmt"
	"net/netip"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func ExampleParse() {
	r, err := policy.Parse("tcp:8080-8090 from 10.0.0.0/9,10.128.0.0/9,2001:db8::/32 # web")
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Protocol, r.Ports, r.SourceCIDRs, r.Description)
	fmt.Println(policy.Format(r))

	_, err = policy.Parse("tcp:22 from 10.0.0.1/8")
	fmt.Println(err)
	// Output:
	// tcp 8080-8090 [10.0.0.0/8 2001:db8::/32] web
	// tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32 # web
	// invalid argument: sources[0] "10.0.0.1/8": host bits are set (did you mean 10.0.0.0/8 or 10.0.0.1/32?)
}

func ExampleEffective() {
	inst := compute.Instance{ID: "i-0a1b2c3d", Cluster: "train"}
	ssh, _ := policy.NewRule(compute.InstanceTarget(inst.ID), compute.RuleSpec{
		Protocol: compute.ProtocolTCP, Ports: compute.Port(22),
		SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32")},
	})
	dns, _ := policy.NewRule(compute.ClusterTarget("train"), compute.RuleSpec{
		Protocol: compute.ProtocolUDP, Ports: compute.Port(53), SourceClusters: []string{"infer"},
	})
	p := policy.Effective(inst, []compute.FirewallRule{ssh, dns})

	from := netip.MustParseAddr
	for _, pkt := range []policy.Packet{
		{Protocol: "tcp", Port: 22, Src: from("192.0.2.7")},
		{Protocol: "tcp", Port: 22, Src: from("192.0.2.8")},
		{Protocol: "tcp", Port: 5000, Src: from("10.199.0.5"), SrcCluster: "train"},
		{Protocol: "udp", Port: 53, Src: from("10.199.1.5"), SrcCluster: "infer"},
		{Protocol: "tcp", Port: 53, Src: from("10.199.1.5"), SrcCluster: "infer"},
	} {
		fmt.Printf("%s:%d from %s (%q): %v\n", pkt.Protocol, pkt.Port, pkt.Src, pkt.SrcCluster, p.Allows(pkt))
	}
	// Output:
	// tcp:22 from 192.0.2.7 (""): true
	// tcp:22 from 192.0.2.8 (""): false
	// tcp:5000 from 10.199.0.5 ("train"): true
	// udp:53 from 10.199.1.5 ("infer"): true
	// tcp:53 from 10.199.1.5 ("infer"): false
}

func ExampleDiff() {
	target := compute.InstanceTarget("i-0a1b2c3d")
	parse := func(ss ...string) []compute.FirewallRule {
		var specs []compute.RuleSpec
		for _, s := range ss {
			r, err := policy.Parse(s)
			if err != nil {
				panic(err)
			}
			specs = append(specs, r)
		}
		rs, err := policy.NewRules(target, specs)
		if err != nil {
			panic(err)
		}
		return rs
	}
	current := parse("tcp:22 from 192.0.2.7", "tcp:80 from 0.0.0.0/0")
	desired := parse("tcp:22 from 192.0.2.7 # ssh", "tcp:443 from 0.0.0.0/0")

	add, revoke := policy.Diff(current, desired)
	for _, r := range add {
		fmt.Println("add   ", policy.Format(r.RuleSpec))
	}
	for _, r := range revoke {
		fmt.Println("revoke", policy.Format(r.RuleSpec))
	}
	// Output:
	// add    tcp:443 from 0.0.0.0/0
	// revoke tcp:80 from 0.0.0.0/0
}
