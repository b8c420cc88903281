package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func (s *suite) noFirewall() outcome {
	return unsupported("the provider's firewall is create-only (no compute.FirewallManager)")
}

// fromCaller is a rule allowing proto/port from the caller's prefixes.
func (s *suite) fromCaller(proto compute.Protocol, port uint16) compute.RuleSpec {
	return compute.RuleSpec{Protocol: proto, Ports: compute.Port(port), SourceCIDRs: s.caller, Description: "conformance"}
}

func (s *suite) checkRuleOpensExactly(ctx context.Context) outcome {
	if s.fw == nil {
		return s.noFirewall()
	}
	if err := s.ready("a1", "a2"); err != nil {
		return fail("%v", err)
	}
	a1, a2 := s.member("a1"), s.member("a2")
	p := s.port(portExact)
	r, err := s.addRule(ctx, compute.InstanceTarget(a1.inst.ID), s.fromCaller(compute.ProtocolTCP, p))
	if err != nil {
		return fail("%v", err)
	}
	exps := []expectation{
		{from: s.host(), to: a1, proto: "tcp", port: p, want: true},
		{from: s.host(), to: a1, proto: "tcp", port: p + 1, want: false},
		{from: s.host(), to: a1, proto: "udp", port: p, want: false},
		{from: s.host(), to: a2, proto: "tcp", port: p, want: false},
	}
	problems := s.verify(ctx, s.ruleWait(), exps...)
	if err := s.revokeRule(ctx, r.ID); err != nil {
		problems = append(problems, err.Error())
	}
	return failures(problems, "tcp:%d from the caller on a1 opens exactly that: tcp:%d, udp:%d and the same port on a2 stay closed", p, p+1, p)
}

func (s *suite) checkRuleOtherSource(ctx context.Context) outcome {
	if s.fw == nil {
		return s.noFirewall()
	}
	ph, ok := s.probeHost()
	if !ok {
		return s.probeHostMissing()
	}
	if err := s.ready("a1"); err != nil {
		return fail("%v", err)
	}
	a1 := s.member("a1")
	p := s.port(portOther)
	for _, pfx := range s.caller {
		if pfx.Contains(ph.src()) {
			return fail("the probe host %s is inside the caller prefix %s, so it cannot show a source outside the rule", ph.src(), pfx)
		}
	}
	t := compute.InstanceTarget(a1.inst.ID)
	r1, err := s.addRule(ctx, t, s.fromCaller(compute.ProtocolTCP, p))
	if err != nil {
		return fail("%v", err)
	}
	problems := s.verify(ctx, s.ruleWait(),
		expectation{from: s.host(), to: a1, proto: "tcp", port: p, want: true},
		expectation{from: ph, to: a1, proto: "tcp", port: p, want: false},
	)
	phRule := compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(p),
		SourceCIDRs: []netip.Prefix{netip.PrefixFrom(ph.src(), ph.src().BitLen())}, Description: "conformance: probe host"}
	r2, err := s.addRule(ctx, t, phRule)
	if err != nil {
		problems = append(problems, err.Error())
	} else {
		problems = append(problems, s.verify(ctx, s.ruleWait(),
			expectation{from: s.host(), to: a1, proto: "tcp", port: p, want: true},
			expectation{from: ph, to: a1, proto: "tcp", port: p, want: true},
		)...)
		if err := s.revokeRule(ctx, r2.ID); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if err := s.revokeRule(ctx, r1.ID); err != nil {
		problems = append(problems, err.Error())
	}
	return failures(problems, "a rule from the caller leaves tcp:%d closed to the probe host %s; a second rule from its /32 opens it", p, ph.src())
}

func (s *suite) checkRuleRevoke(ctx context.Context) outcome {
	if s.fw == nil {
		return s.noFirewall()
	}
	if err := s.ready("a1", "a2"); err != nil {
		return fail("%v", err)
	}
	a1, a2 := s.member("a1"), s.member("a2")
	p := s.port(portRevoke)
	spec := s.fromCaller(compute.ProtocolTCP, p)
	ri, err := s.addRule(ctx, compute.InstanceTarget(a1.inst.ID), spec)
	if err != nil {
		return fail("%v", err)
	}
	rc, err := s.addRule(ctx, compute.ClusterTarget(s.clusterA), spec)
	if err != nil {
		s.revokeRule(ctx, ri.ID)
		return fail("%v", err)
	}
	probes := func(open bool) []expectation {
		return []expectation{
			{from: s.host(), to: a1, proto: "tcp", port: p, want: open},
			{from: s.host(), to: a2, proto: "tcp", port: p, want: open},
		}
	}
	// Both open; revoking the instance rule leaves the cluster rule (the
	// same packets) in force; revoking that closes both. One revoke must
	// never close or open what another rule says.
	problems := s.verify(ctx, s.ruleWait(), probes(true)...)
	if len(problems) > 0 {
		s.revokeRule(ctx, ri.ID)
		s.revokeRule(ctx, rc.ID)
		return fail("before any revoke: %v", problems)
	}
	steps := []struct {
		id, what string
		open     bool
	}{
		{ri.ID, "instance rule (the cluster rule still allows)", true},
		{rc.ID, "cluster rule", false},
	}
	for _, st := range steps {
		if err := s.revokeRule(ctx, st.id); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		exps := probes(st.open)
		for _, pr := range s.verify(ctx, s.ruleWait(), exps...) {
			problems = append(problems, fmt.Sprintf("after revoking the %s within %s: %s", st.what, s.ruleWait(), pr))
		}
	}
	for _, t := range []compute.Target{compute.InstanceTarget(a1.inst.ID), compute.ClusterTarget(s.clusterA)} {
		listed, err := s.fw.ListRules(ctx, t)
		if err != nil {
			problems = append(problems, fmt.Sprintf("list rules of %s: %v", t, err))
			continue
		}
		for _, r := range listed {
			if r.ID == ri.ID || r.ID == rc.ID {
				problems = append(problems, fmt.Sprintf("revoked rule %s is still listed on %s", r.ID, t))
			}
		}
	}
	return failures(problems, "revoking an instance rule kept the identical cluster rule in force; revoking that closed tcp:%d on a1 and a2 within %s; neither is listed", p, s.ruleWait())
}

func ids(rules []compute.FirewallRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.ID
	}
	slices.Sort(out)
	return out
}

func (s *suite) checkRuleSet(ctx context.Context) outcome {
	if s.fw == nil {
		return s.noFirewall()
	}
	if err := s.ready("a1"); err != nil {
		return fail("%v", err)
	}
	a1 := s.member("a1")
	t := compute.InstanceTarget(a1.inst.ID)
	pa, pb := s.port(portSetA), s.port(portSetB)
	first := []compute.RuleSpec{s.fromCaller(compute.ProtocolTCP, pa), s.fromCaller(compute.ProtocolUDP, pa)}
	if _, err := s.setRules(ctx, t, first); err != nil {
		return fail("%v", err)
	}
	problems := s.verify(ctx, s.ruleWait(),
		expectation{from: s.host(), to: a1, proto: "tcp", port: pa, want: true},
		expectation{from: s.host(), to: a1, proto: "udp", port: pa, want: true},
		expectation{from: s.host(), to: a1, proto: "tcp", port: pb, want: false},
	)
	second := []compute.RuleSpec{s.fromCaller(compute.ProtocolTCP, pb)}
	got, err := s.setRules(ctx, t, second)
	if err != nil {
		return fail("%v", append(problems, err.Error()))
	}
	problems = append(problems, s.verify(ctx, s.ruleWait(),
		expectation{from: s.host(), to: a1, proto: "tcp", port: pa, want: false},
		expectation{from: s.host(), to: a1, proto: "udp", port: pa, want: false},
		expectation{from: s.host(), to: a1, proto: "tcp", port: pb, want: true},
	)...)
	want, err := policy.NewRules(t, second)
	if err != nil {
		return fail("policy.NewRules: %v", err)
	}
	if !slices.Equal(ids(got), ids(want)) {
		problems = append(problems, fmt.Sprintf("SetRules returned rule IDs %v, policy derives %v", ids(got), ids(want)))
	}
	if listed, err := s.fw.ListRules(ctx, t); err != nil {
		problems = append(problems, err.Error())
	} else if !slices.Equal(ids(listed), ids(want)) {
		problems = append(problems, fmt.Sprintf("after SetRules, ListRules shows %v, want exactly %v", ids(listed), ids(want)))
	}
	return failures(problems, "SetRules opened tcp+udp:%d, then converging to tcp:%d closed both and opened it; IDs are policy's", pa, pb)
}

func (s *suite) checkRuleSetIdempotent(ctx context.Context) outcome {
	if s.fw == nil {
		return s.noFirewall()
	}
	if err := s.ready("a1"); err != nil {
		return fail("%v", err)
	}
	a1 := s.member("a1")
	t := compute.InstanceTarget(a1.inst.ID)
	pb := s.port(portSetB)
	specs := []compute.RuleSpec{s.fromCaller(compute.ProtocolTCP, pb)}
	first, err := s.setRules(ctx, t, specs)
	if err != nil {
		return fail("%v", err)
	}
	before, err := s.fw.ListRules(ctx, t)
	if err != nil {
		return fail("list rules: %v", err)
	}
	second, err := s.setRules(ctx, t, specs)
	if err != nil {
		return fail("%v", err)
	}
	after, err := s.fw.ListRules(ctx, t)
	if err != nil {
		return fail("list rules: %v", err)
	}
	var problems []string
	for _, c := range []struct {
		what string
		got  []compute.FirewallRule
	}{{"ListRules before", before}, {"second SetRules", second}, {"ListRules after", after}} {
		if !slices.Equal(ids(c.got), ids(first)) {
			problems = append(problems, fmt.Sprintf("%s: IDs %v, first SetRules returned %v", c.what, ids(c.got), ids(first)))
		}
	}
	problems = append(problems, s.verify(ctx, s.ruleWait(),
		expectation{from: s.host(), to: a1, proto: "tcp", port: pb, want: true},
	)...)
	// Converge to nothing: the target's rules are gone and the port closes.
	if _, err := s.setRules(ctx, t, nil); err != nil {
		problems = append(problems, err.Error())
	} else {
		problems = append(problems, s.verify(ctx, s.ruleWait(),
			expectation{from: s.host(), to: a1, proto: "tcp", port: pb, want: false},
		)...)
	}
	return failures(problems, "re-applying the same set returned and listed the same rule IDs %v and changed nothing; an empty set closed it", ids(first))
}
