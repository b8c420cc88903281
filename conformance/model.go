package conformance

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance/internal/probe"
	"github.com/compute-sdk/compute/policy"
)

// The suite's model of the firewall is the rules it asked for, never what
// the provider lists: a provider that drops a revoke but still lists the
// rule as gone (or keeps listing it) must not change the prediction.

func (s *suite) modelAdd(t compute.Target, specs ...compute.RuleSpec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, spec := range specs {
		r, err := policy.NewRule(t, spec)
		if err != nil {
			// The suite only writes valid rules; keep going with what the
			// provider accepted and let the probes show the difference.
			s.log.Error("conformance: policy rejected a suite rule", "rule", spec, "err", err)
			continue
		}
		s.rules[r.ID] = r
	}
}

func (s *suite) modelRemove(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.rules, id)
	}
}

func (s *suite) modelRules() map[string]compute.FirewallRule {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.rules)
}

func (s *suite) addRule(ctx context.Context, t compute.Target, spec compute.RuleSpec) (*compute.FirewallRule, error) {
	r, err := s.fw.AddRule(ctx, t, spec)
	if err != nil {
		return nil, fmt.Errorf("add rule %s to %s: %w", spec.Protocol, t, err)
	}
	s.modelAdd(t, spec)
	return r, nil
}

func (s *suite) revokeRule(ctx context.Context, id string) error {
	s.modelRemove(id)
	if err := s.fw.RevokeRule(ctx, id); err != nil {
		return fmt.Errorf("revoke rule %s: %w", id, err)
	}
	return nil
}

// setRules calls SetRules and makes the model hold exactly specs on t.
func (s *suite) setRules(ctx context.Context, t compute.Target, specs []compute.RuleSpec) ([]compute.FirewallRule, error) {
	s.mu.Lock()
	for id, r := range s.rules {
		if r.Target == t {
			delete(s.rules, id)
		}
	}
	s.mu.Unlock()
	s.modelAdd(t, specs...)
	got, err := s.fw.SetRules(ctx, t, specs)
	if err != nil {
		return nil, fmt.Errorf("set rules on %s: %w", t, err)
	}
	return got, nil
}

// predict says whether the policy lets a packet from v reach dst.
func (s *suite) predict(v vantage, dst *member, proto string, port uint16) bool {
	rules := make([]compute.FirewallRule, 0, len(s.rules))
	for _, r := range s.modelRules() {
		rules = append(rules, r)
	}
	sort.Slice(rules, func(i, j int) bool { return rules[i].ID < rules[j].ID })
	inst := *dst.inst
	inst.Cluster = dst.cluster // what the suite asked for, not what the provider says
	pol := policy.Effective(inst, rules)
	return pol.Allows(policy.Packet{
		Protocol:   compute.Protocol(proto),
		Port:       port,
		Src:        v.src(),
		SrcCluster: v.cluster(),
	})
}

// vantage is a place probes are sent from.
type vantage interface {
	name() string
	src() netip.Addr // the source address instances see
	cluster() string // the sender's cluster, "" when it is not an instance
	probe(ctx context.Context, targets []probe.Target) ([]probe.Result, error)
}

// hostVantage is the test process itself.
type hostVantage struct{ s *suite }

func (h hostVantage) name() string    { return "host" }
func (h hostVantage) src() netip.Addr { return h.s.callerAddr }
func (h hostVantage) cluster() string { return "" }
func (h hostVantage) probe(ctx context.Context, ts []probe.Target) ([]probe.Result, error) {
	return probe.All(ctx, probe.Local{}, ts, h.s.token, probeTimeout), nil
}

// probeHostVantage is a provider-attached probe host.
type probeHostVantage struct{ s *suite }

func (p probeHostVantage) name() string    { return "probe host " + p.s.ph.Addr().String() }
func (p probeHostVantage) src() netip.Addr { return p.s.ph.Addr() }
func (p probeHostVantage) cluster() string { return "" }
func (p probeHostVantage) probe(ctx context.Context, ts []probe.Target) ([]probe.Result, error) {
	return probe.All(ctx, p.s.ph, ts, p.s.token, probeTimeout), nil
}

// memberVantage probes from inside an instance.
type memberVantage struct {
	s *suite
	m *member
}

func (v memberVantage) name() string    { return v.m.key }
func (v memberVantage) src() netip.Addr { return v.m.addr }
func (v memberVantage) cluster() string { return v.m.cluster }
func (v memberVantage) probe(ctx context.Context, ts []probe.Target) ([]probe.Result, error) {
	return v.m.dial(ctx, ts, v.s.token, probeTimeout)
}

func (s *suite) host() vantage              { return hostVantage{s} }
func (s *suite) from(key string) vantage    { return memberVantage{s, s.member(key)} }
func (s *suite) probeHost() (vantage, bool) { return probeHostVantage{s}, s.ph != nil }

// probeHostMissing explains why there is no probe host, as an outcome.
func (s *suite) probeHostMissing() outcome {
	if s.phErr != nil {
		return fail("the provider implements ProbeHoster but attaching a probe host failed: %v", s.phErr)
	}
	return unsupported("the provider offers no second vantage point (compute.ProbeHoster)")
}

// expectation is one probe and the answer the security model requires.
// The answer the probe must see is the policy's prediction; want only
// guards against a policy that predicts something the model forbids.
type expectation struct {
	from  vantage
	to    *member
	proto string
	port  uint16
	want  bool
	// v6 probes the target's IPv6 address instead of its IPv4 one.
	v6 bool
}

func (e expectation) target() probe.Target {
	a := e.to.addr
	if e.v6 {
		a = e.to.addr6
	}
	return probe.Target{Proto: e.proto, Addr: a, Port: e.port}
}

func (e expectation) String() string {
	return fmt.Sprintf("%s → %s %s", e.from.name(), e.to.key, e.target())
}

func state(open bool) string {
	if open {
		return "open"
	}
	return "closed"
}

// verify runs the probes (grouped by vantage, concurrently) and returns a
// problem for each one whose observation differs from the policy's
// prediction. With within > 0 it retries until the observations match or
// the time is up, for changes that apply with a delay.
func (s *suite) verify(ctx context.Context, within time.Duration, exps ...expectation) []string {
	deadline := time.Now().Add(within)
	for {
		problems, mismatches := s.verifyOnce(ctx, exps)
		// Only a mismatch can go away by waiting; a probe that cannot run
		// will not run later either.
		if mismatches == 0 || within <= 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return problems
		}
		s.log.Debug("conformance: not converged yet", "problems", problems)
		time.Sleep(300 * time.Millisecond)
	}
}

func (s *suite) verifyOnce(ctx context.Context, exps []expectation) (problems []string, mismatches int) {
	predicted := make([]bool, len(exps))
	for i, e := range exps {
		predicted[i] = s.predict(e.from, e.to, e.proto, e.port)
		if predicted[i] != e.want {
			problems = append(problems, fmt.Sprintf("%s: policy.Effective predicts %s but the security model requires %s (policy or suite bug)",
				e, state(predicted[i]), state(e.want)))
		}
	}
	// Group by vantage, keeping order, and probe each group concurrently.
	type group struct {
		v   vantage
		idx []int
	}
	var groups []*group
	byName := map[string]*group{}
	for i, e := range exps {
		g := byName[e.from.name()]
		if g == nil {
			g = &group{v: e.from}
			byName[e.from.name()] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	observed := make([]probe.Result, len(exps))
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for gi, g := range groups {
		wg.Go(func() {
			ts := make([]probe.Target, len(g.idx))
			for j, i := range g.idx {
				ts[j] = exps[i].target()
			}
			res, err := g.v.probe(ctx, ts)
			if err != nil {
				errs[gi] = err
				return
			}
			for j, i := range g.idx {
				observed[i] = res[j]
			}
		})
	}
	wg.Wait()
	for gi, err := range errs {
		if err != nil {
			problems = append(problems, fmt.Sprintf("probing from %s: %v", groups[gi].v.name(), err))
		}
	}
	for i, e := range exps {
		o := observed[i]
		if o.Target == "" {
			continue // its group failed, reported above
		}
		s.log.Debug("conformance: probe", "probe", e.String(), "open", o.Open, "verified", o.Verified, "detail", o.Detail, "predicted", predicted[i])
		switch {
		case o.Err != "":
			problems = append(problems, fmt.Sprintf("%s: could not probe: %s", e, o.Err))
		case o.Open != predicted[i]:
			d := ""
			if o.Detail != "" {
				d = " (" + o.Detail + ")"
			}
			problems = append(problems, fmt.Sprintf("%s: observed %s%s, policy predicts %s", e, state(o.Open), d, state(predicted[i])))
			mismatches++
		case o.Open && !o.Verified:
			problems = append(problems, fmt.Sprintf("%s: open, but the answer did not come from the suite's listener (%s)", e, o.Detail))
			mismatches++
		}
	}
	return problems, mismatches
}

// describeExps summarises what a passing batch covered.
func describeExps(exps []expectation) string {
	var open, closed []string
	for _, e := range exps {
		if e.want {
			open = append(open, e.String())
		} else {
			closed = append(closed, e.String())
		}
	}
	var parts []string
	if len(closed) > 0 {
		parts = append(parts, fmt.Sprintf("%d probes closed as predicted", len(closed)))
	}
	if len(open) > 0 {
		parts = append(parts, fmt.Sprintf("%d probes open as predicted", len(open)))
	}
	return strings.Join(parts, ", ")
}
