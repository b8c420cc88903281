package conformance

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance/internal/probe"
)

// fakeVantage answers probes from a table, to test the comparison logic.
type fakeVantage struct {
	label string
	addr  netip.Addr
	clus  string
	open  func(t probe.Target) bool
	err   error
	calls atomic.Int32
}

func (f *fakeVantage) name() string    { return f.label }
func (f *fakeVantage) src() netip.Addr { return f.addr }
func (f *fakeVantage) cluster() string { return f.clus }
func (f *fakeVantage) probe(ctx context.Context, ts []probe.Target) ([]probe.Result, error) {
	f.calls.Add(1)
	if f.err != nil {
		return nil, f.err
	}
	res := make([]probe.Result, len(ts))
	for i, t := range ts {
		o := f.open(t)
		res[i] = probe.Result{Target: t.String(), Open: o, Verified: o}
	}
	return res, nil
}

func testSuite() *suite {
	s := &suite{
		log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		rules:      map[string]compute.FirewallRule{},
		results:    map[string]Result{},
		caller:     []netip.Prefix{netip.MustParsePrefix("10.231.255.1/32")},
		callerAddr: netip.MustParseAddr("10.231.255.1"),
		clusterA:   "cf-x-a",
		clusterB:   "cf-x-b",
	}
	mk := func(key, cluster, id, addr string) *member {
		return &member{key: key, cluster: cluster, addr: netip.MustParseAddr(addr),
			inst: &compute.Instance{ID: id, Cluster: "whatever-the-provider-says"}}
	}
	s.members = []*member{
		mk("a1", "cf-x-a", "i-000000a1", "10.231.0.2"),
		mk("a2", "cf-x-a", "i-000000a2", "10.231.0.3"),
		mk("b1", "cf-x-b", "i-000000b1", "10.231.1.2"),
		mk("l1", "", "i-000000c1", "10.231.2.2"),
	}
	return s
}

func TestPredictFollowsTheSuitesModel(t *testing.T) {
	s := testSuite()
	a1, a2 := s.member("a1"), s.member("a2")
	host := &fakeVantage{label: "host", addr: s.callerAddr}
	b1 := memberVantage{s, s.member("b1")}
	a2v := memberVantage{s, a2}

	// Default deny, cluster peers allowed: the cluster is the one the
	// suite asked for, not the one the provider reports.
	if s.predict(host, a1, "tcp", 22) {
		t.Error("tcp:22 from the host predicted open with no rules")
	}
	if !s.predict(a2v, a1, "udp", 5000) || !s.predict(a2v, a1, "icmp", 0) {
		t.Error("cluster peer predicted closed")
	}
	if s.predict(b1, a1, "tcp", 5000) {
		t.Error("member of another cluster predicted open")
	}

	s.modelAdd(compute.ClusterTarget(s.clusterA), s.sshRule())
	if !s.predict(host, a1, "tcp", 22) || !s.predict(host, a2, "tcp", 22) {
		t.Error("cluster SSH rule not predicted open on members")
	}
	if s.predict(b1, a1, "tcp", 22) || s.predict(host, s.member("b1"), "tcp", 22) {
		t.Error("cluster A's SSH rule predicted open for b1")
	}
	spec := compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(9000), SourceClusters: []string{s.clusterB}}
	s.modelAdd(compute.ClusterTarget(s.clusterA), spec)
	if !s.predict(b1, a1, "tcp", 9000) || s.predict(b1, a1, "tcp", 9001) || s.predict(memberVantage{s, s.member("l1")}, a1, "tcp", 9000) {
		t.Error("cross-cluster rule predicted wrongly")
	}
	for id, r := range s.modelRules() {
		if len(r.SourceClusters) > 0 {
			s.modelRemove(id)
		}
	}
	if s.predict(b1, a1, "tcp", 9000) {
		t.Error("removed rule still predicted open")
	}
}

func TestVerifyComparesObservedWithPredicted(t *testing.T) {
	s := testSuite()
	a1 := s.member("a1")
	s.modelAdd(compute.InstanceTarget(a1.inst.ID), s.fromCaller(compute.ProtocolTCP, 8080))

	honest := &fakeVantage{label: "host", addr: s.callerAddr, open: func(t probe.Target) bool {
		return t.Proto == "tcp" && t.Port == 8080
	}}
	exps := []expectation{
		{from: honest, to: a1, proto: "tcp", port: 8080, want: true},
		{from: honest, to: a1, proto: "tcp", port: 8081, want: false},
	}
	if p := s.verify(t.Context(), 0, exps...); len(p) != 0 {
		t.Errorf("honest observations: %v", p)
	}

	leaky := &fakeVantage{label: "host", addr: s.callerAddr, open: func(probe.Target) bool { return true }}
	p := s.verify(t.Context(), 0, expectation{from: leaky, to: a1, proto: "tcp", port: 8081, want: false})
	if len(p) != 1 || !strings.Contains(p[0], "observed open") || !strings.Contains(p[0], "policy predicts closed") {
		t.Errorf("leaky observations: %v", p)
	}

	// An intent the policy contradicts is reported even when the probe
	// agrees with the policy: a policy bug must not make a check pass.
	p = s.verify(t.Context(), 0, expectation{from: honest, to: a1, proto: "tcp", port: 8080, want: false})
	if len(p) != 1 || !strings.Contains(p[0], "security model requires closed") {
		t.Errorf("contradicted intent: %v", p)
	}

	broken := &fakeVantage{label: "host", addr: s.callerAddr, err: errString("ssh died")}
	p = s.verify(t.Context(), 0, expectation{from: broken, to: a1, proto: "tcp", port: 8081, want: false})
	if len(p) != 1 || !strings.Contains(p[0], "ssh died") {
		t.Errorf("failed vantage: %v", p)
	}

	// Retrying: an observation that converges within the window passes.
	var n atomic.Int32
	slow := &fakeVantage{label: "host", addr: s.callerAddr, open: func(probe.Target) bool { return n.Add(1) > 2 }}
	start := time.Now()
	if p := s.verify(t.Context(), 5*time.Second, expectation{from: slow, to: a1, proto: "tcp", port: 8080, want: true}); len(p) != 0 {
		t.Errorf("converging observation: %v", p)
	}
	if slow.calls.Load() != 3 || time.Since(start) > 3*time.Second {
		t.Errorf("retried %d times in %s", slow.calls.Load(), time.Since(start))
	}
}

func TestCheckRecordsPanicsAndCancellation(t *testing.T) {
	var got []Result
	s := testSuite()
	s.emit = func(r Result) { got = append(got, r) }
	s.check(t.Context(), CheckRuleSet, func(context.Context) outcome { panic("boom") })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	s.check(ctx, CheckRuleRevoke, func(context.Context) outcome { return pass("never") })
	s.check(t.Context(), CheckDenyDNAT, func(context.Context) outcome { return unsupported("no") })
	s.finish(errString("setup broke"))
	if len(got) != len(checkNames) {
		t.Fatalf("%d results, want every check", len(got))
	}
	if got[0].Status != StatusFail || !strings.Contains(got[0].Reason, "panic: boom") {
		t.Errorf("panicking check: %+v", got[0])
	}
	if got[1].Status != StatusFail || !strings.Contains(got[1].Reason, "not run") {
		t.Errorf("cancelled check: %+v", got[1])
	}
	if got[2].Status != StatusSkip || !got[2].unsupported {
		t.Errorf("unsupported check: %+v", got[2])
	}
	for _, r := range got[3:] {
		if r.Status != StatusFail || !strings.Contains(r.Reason, "setup broke") {
			t.Errorf("unrun check: %+v", r)
		}
	}
}
