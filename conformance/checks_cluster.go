package conformance

import (
	"context"

	"github.com/compute-sdk/compute"
)

func (s *suite) checkClusterPeers(ctx context.Context) outcome {
	if err := s.ready("a1", "a2"); err != nil {
		return fail("%v", err)
	}
	p := s.port(portPeer)
	var exps []expectation
	for _, pair := range [][2]string{{"a2", "a1"}, {"a1", "a2"}} {
		from, to := s.from(pair[0]), s.member(pair[1])
		exps = append(exps,
			expectation{from: from, to: to, proto: "tcp", port: p, want: true},
			expectation{from: from, to: to, proto: "udp", port: p, want: true},
			expectation{from: from, to: to, proto: "icmp", want: true},
		)
	}
	return failures(s.verify(ctx, 0, exps...), "a1 and a2 reach each other on tcp:%d, udp:%d and icmp", p, p)
}

func (s *suite) checkClusterIsolation(ctx context.Context) outcome {
	if err := s.ready("a1", "a2", "b1", "l1"); err != nil {
		return fail("%v", err)
	}
	p := s.port(portPeer)
	var exps []expectation
	deny := func(from, to string) {
		f, t := s.from(from), s.member(to)
		exps = append(exps,
			expectation{from: f, to: t, proto: "tcp", port: p, want: false},
			expectation{from: f, to: t, proto: "udp", port: p, want: false},
			expectation{from: f, to: t, proto: "icmp", want: false},
			expectation{from: f, to: t, proto: "tcp", port: 22, want: false},
		)
	}
	deny("b1", "a1")
	deny("b1", "a2")
	deny("l1", "a1")
	deny("a1", "b1")
	deny("a1", "l1")
	// Control: the same listener answers a member of its own cluster.
	exps = append(exps, expectation{from: s.from("a2"), to: s.member("a1"), proto: "tcp", port: p, want: true})
	return failures(s.verify(ctx, 0, exps...), "cluster B's member and the lone instance reach nothing on A's members (tcp, udp, icmp, ssh), nor A theirs; A's peer does (control)")
}

func (s *suite) checkClusterCrossRule(ctx context.Context) outcome {
	if s.fw == nil {
		return s.noFirewall()
	}
	if err := s.ready("a1", "a2", "b1", "l1"); err != nil {
		return fail("%v", err)
	}
	a1, a2 := s.member("a1"), s.member("a2")
	p := s.port(portCross)
	r, err := s.addRule(ctx, compute.ClusterTarget(s.clusterA), compute.RuleSpec{
		Protocol: compute.ProtocolTCP, Ports: compute.Port(p), SourceClusters: []string{s.clusterB},
		Description: "conformance: cross-cluster",
	})
	if err != nil {
		return fail("%v", err)
	}
	exps := []expectation{
		{from: s.from("b1"), to: a1, proto: "tcp", port: p, want: true},
		{from: s.from("b1"), to: a2, proto: "tcp", port: p, want: true},
		{from: s.from("b1"), to: a1, proto: "tcp", port: p + 1, want: false},
		{from: s.from("b1"), to: a1, proto: "udp", port: p, want: false},
		{from: s.from("b1"), to: a1, proto: "icmp", want: false},
		{from: s.from("l1"), to: a1, proto: "tcp", port: p, want: false},
		{from: s.host(), to: a1, proto: "tcp", port: p, want: false},
		// Ingress only: the rule opens A to B, not B to A.
		{from: s.from("a1"), to: s.member("b1"), proto: "tcp", port: p, want: false},
	}
	problems := s.verify(ctx, s.ruleWait(), exps...)
	if err := s.revokeRule(ctx, r.ID); err != nil {
		problems = append(problems, err.Error())
	} else {
		problems = append(problems, s.verify(ctx, s.ruleWait(),
			expectation{from: s.from("b1"), to: a1, proto: "tcp", port: p, want: false})...)
	}
	return failures(problems, "tcp:%d on cluster A from cluster B opens exactly that port to B's member; other ports, protocols, the lone instance, the host and the reverse direction stay closed; revoking closes it", p)
}
