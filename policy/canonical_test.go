package policy_test

import (
	"reflect"
	"regexp"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func TestCanonical(t *testing.T) {
	cases := []struct {
		name string
		in   compute.RuleSpec
		want compute.RuleSpec
	}{
		{
			name: "adjacent halves merge",
			in:   compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("10.128.0.0/9", "10.0.0.0/9")},
			want: compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("10.0.0.0/8")},
		},
		{
			name: "contained prefix disappears, v4 before v6",
			in:   compute.RuleSpec{Protocol: "all", SourceCIDRs: pfxs("2001:db8::/32", "10.1.0.0/16", "10.0.0.0/8", "2001:db8:1::/48")},
			want: compute.RuleSpec{Protocol: "all", SourceCIDRs: pfxs("10.0.0.0/8", "2001:db8::/32")},
		},
		{
			name: "disjoint stay apart in address order",
			in:   compute.RuleSpec{Protocol: "udp", Ports: compute.Port(53), SourceCIDRs: pfxs("192.0.2.0/25", "10.0.0.0/24", "192.0.2.128/26")},
			want: compute.RuleSpec{Protocol: "udp", Ports: compute.Port(53), SourceCIDRs: pfxs("10.0.0.0/24", "192.0.2.0/25", "192.0.2.128/26")},
		},
		{
			name: "clusters sorted and unique",
			in:   compute.RuleSpec{Protocol: "all", SourceClusters: []string{"b", "a", "b"}, Description: "keep me"},
			want: compute.RuleSpec{Protocol: "all", SourceClusters: []string{"a", "b"}, Description: "keep me"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := policy.Canonical(tc.in)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Canonical = %+v, want %+v", got, tc.want)
			}
			if again := policy.Canonical(got); !reflect.DeepEqual(again, got) {
				t.Errorf("Canonical is not idempotent: %+v -> %+v", got, again)
			}
		})
	}
	// Canonical must not modify its argument's slices.
	in := compute.RuleSpec{Protocol: "all", SourceClusters: []string{"b", "a"}}
	policy.Canonical(in)
	if in.SourceClusters[0] != "b" {
		t.Error("Canonical modified its input")
	}
}

func TestRuleID(t *testing.T) {
	target := compute.InstanceTarget("i-0123abcd")
	r := compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("10.0.0.0/9", "10.128.0.0/9"), SourceClusters: []string{"b", "a"}}
	id := policy.RuleID(target, r)
	if !regexp.MustCompile(`^fw-[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("RuleID = %q, want fw- and 16 hex digits", id)
	}
	same := []compute.RuleSpec{
		policy.Canonical(r),
		{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("10.0.0.0/8"), SourceClusters: []string{"a", "b", "a"}},
		func() compute.RuleSpec { c := r; c.Description = "described"; return c }(),
	}
	for i, s := range same {
		if got := policy.RuleID(target, s); got != id {
			t.Errorf("same[%d]: RuleID = %s, want %s", i, got, id)
		}
	}
	different := []struct {
		name   string
		target compute.Target
		rule   compute.RuleSpec
	}{
		{"other instance", compute.InstanceTarget("i-0123abce"), r},
		{"cluster of the same name", compute.ClusterTarget("i-0123abcd"), r},
		{"udp", target, func() compute.RuleSpec { c := r; c.Protocol = "udp"; return c }()},
		{"other port", target, func() compute.RuleSpec { c := r; c.Ports = compute.Port(23); return c }()},
		{"range", target, func() compute.RuleSpec { c := r; c.Ports = compute.Ports(22, 23); return c }()},
		{"narrower source", target, func() compute.RuleSpec { c := r; c.SourceCIDRs = pfxs("10.0.0.0/9"); return c }()},
		{"fewer clusters", target, func() compute.RuleSpec { c := r; c.SourceClusters = []string{"a"}; return c }()},
		// A cluster named like a prefix must not collide with the prefix.
		{"cluster vs cidr", target, compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceClusters: []string{"10.0.0.0/8", "a", "b"}}},
	}
	seen := map[string]string{id: "base"}
	for _, tc := range different {
		got := policy.RuleID(tc.target, tc.rule)
		if prev, dup := seen[got]; dup {
			t.Errorf("%s: RuleID %s collides with %s", tc.name, got, prev)
		}
		seen[got] = tc.name
	}
}

func TestNewRule(t *testing.T) {
	target := compute.ClusterTarget("train")
	fr, err := policy.NewRule(target, compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("10.0.0.0/9", "10.128.0.0/9")})
	if err != nil {
		t.Fatal(err)
	}
	if fr.Target != target || fr.ID != policy.RuleID(target, fr.RuleSpec) || !reflect.DeepEqual(fr.SourceCIDRs, pfxs("10.0.0.0/8")) {
		t.Errorf("NewRule = %+v", fr)
	}
	_, err = policy.NewRule(compute.Target{Kind: "vpc", Name: "x"}, fr.RuleSpec)
	wantField(t, err, "target.kind")
	_, err = policy.NewRule(compute.InstanceTarget(""), fr.RuleSpec)
	wantField(t, err, "target.name")
	_, err = policy.NewRule(target, compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22)})
	wantField(t, err, "sources")
}

func TestNewRules(t *testing.T) {
	target := compute.InstanceTarget("i-1")
	specs := []compute.RuleSpec{
		{Protocol: "udp", Ports: compute.Port(53), SourceClusters: []string{"a"}, Description: "first"},
		{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.7/32")},
		{Protocol: "udp", Ports: compute.Port(53), SourceClusters: []string{"a", "a"}, Description: "duplicate"},
	}
	rs, err := policy.NewRules(target, specs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("NewRules returned %d rules, want 2 (duplicates collapse): %+v", len(rs), rs)
	}
	if rs[0].ID >= rs[1].ID {
		t.Errorf("not sorted by ID: %s, %s", rs[0].ID, rs[1].ID)
	}
	for _, r := range rs {
		if r.Protocol == "udp" && r.Description != "first" {
			t.Errorf("duplicate kept description %q, want the first one's", r.Description)
		}
	}
	specs = append(specs, compute.RuleSpec{Protocol: "icmp", Ports: compute.Port(1), SourceCIDRs: pfxs("0.0.0.0/0")})
	_, err = policy.NewRules(target, specs)
	wantField(t, err, "rules[3].ports")
	_, err = policy.NewRules(compute.Target{}, specs[:1])
	wantField(t, err, "target.kind")
	if rs, err := policy.NewRules(target, nil); err != nil || len(rs) != 0 {
		t.Errorf("NewRules(nil) = %v, %v", rs, err)
	}
}

func mustRules(t testing.TB, target compute.Target, ss ...string) []compute.FirewallRule {
	t.Helper()
	var specs []compute.RuleSpec
	for _, s := range ss {
		r, err := policy.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, r)
	}
	rs, err := policy.NewRules(target, specs)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func ids(rs []compute.FirewallRule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

func TestDiff(t *testing.T) {
	tg := compute.InstanceTarget("i-1")
	a := mustRules(t, tg, "tcp:22 from 192.0.2.7")
	b := mustRules(t, tg, "tcp:80 from 0.0.0.0/0")
	c := mustRules(t, tg, "udp:53 from cluster:dns")
	cat := func(rss ...[]compute.FirewallRule) []compute.FirewallRule {
		var out []compute.FirewallRule
		for _, rs := range rss {
			out = append(out, rs...)
		}
		return out
	}
	sorted := func(rs []compute.FirewallRule) []string {
		out := ids(rs)
		for i := 1; i < len(out); i++ {
			for j := i; j > 0 && out[j] < out[j-1]; j-- {
				out[j], out[j-1] = out[j-1], out[j]
			}
		}
		return out
	}
	cases := []struct {
		name              string
		current, desired  []compute.FirewallRule
		wantAdd, wantRevo []compute.FirewallRule
	}{
		{"empty", nil, nil, nil, nil},
		{"add all", nil, cat(a, b), cat(a, b), nil},
		{"revoke all", cat(c, a), nil, nil, cat(c, a)},
		{"no-op", cat(a, b, c), cat(c, b, a), nil, nil},
		{"swap", cat(a, b), cat(b, c), c, a},
		{"duplicates in desired add once", nil, cat(a, a), a, nil},
		{"duplicates in current revoke once", cat(b, b), nil, nil, b},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			add, revoke := policy.Diff(tc.current, tc.desired)
			if got, want := ids(add), sorted(tc.wantAdd); !reflect.DeepEqual(got, want) {
				t.Errorf("add = %v, want %v", got, want)
			}
			if got, want := ids(revoke), sorted(tc.wantRevo); !reflect.DeepEqual(got, want) {
				t.Errorf("revoke = %v, want %v", got, want)
			}
		})
	}
	// A description change is not a rule change: the ID is the same, so
	// SetRules with a new description is a no-op.
	d := mustRules(t, tg, "tcp:22 from 192.0.2.7 # office")
	if add, revoke := policy.Diff(a, d); len(add)+len(revoke) != 0 {
		t.Errorf("description-only change gave add=%v revoke=%v", ids(add), ids(revoke))
	}
}
