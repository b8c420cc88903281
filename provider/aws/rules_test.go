package aws

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func mustParse(t *testing.T, s string) compute.RuleSpec {
	t.Helper()
	r, err := policy.Parse(s)
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return r
}

func TestRulesAddRevokeWire(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()
	cl, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "db"})
	if err != nil {
		t.Fatal(err)
	}
	target := compute.ClusterTarget("db")
	self := "-1|-1|-1|sg:" + cl.ID

	f.resetCalls()
	r1, err := p.AddRule(ctx, target, mustParse(t, "tcp:22 from 198.51.100.0/24 # ops"))
	if err != nil {
		t.Fatalf("AddRule: %v", err)
	}
	if want := policy.RuleID(target, mustParse(t, "tcp:22 from 198.51.100.0/24")); r1.ID != want {
		t.Errorf("rule ID = %s, want policy's %s", r1.ID, want)
	}
	auth := f.callsOf("AuthorizeSecurityGroupIngress")
	if len(auth) != 1 {
		t.Fatalf("Authorize calls = %d, want 1", len(auth))
	}
	q := auth[0].Params
	for k, want := range map[string]string{
		"GroupId":                           cl.ID,
		"IpPermissions.1.IpProtocol":        "tcp",
		"IpPermissions.1.FromPort":          "22",
		"IpPermissions.1.ToPort":            "22",
		"IpPermissions.1.IpRanges.1.CidrIp": "198.51.100.0/24",
		"TagSpecification.1.ResourceType":   "security-group-rule",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("Authorize %s = %q, want %q", k, got, want)
		}
	}
	if q.Has("IpPermissions.2.IpProtocol") || q.Has("IpPermissions.1.IpRanges.2.CidrIp") {
		t.Errorf("Authorize sends more than one permission: %v", q)
	}
	tags := tagPairs(q, "TagSpecification.1.Tag")
	if tags["compute:owner"] != "test-owner" || tags["compute:rule:"+r1.ID] != "tcp:22 from 198.51.100.0/24 # ops" {
		t.Errorf("rule tags = %v", tags)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{self, "tcp|22|22|198.51.100.0/24"}) {
		t.Errorf("ingress = %v", got)
	}

	// Adding it again changes nothing.
	f.resetCalls()
	again, err := p.AddRule(ctx, target, mustParse(t, "tcp:22 from 198.51.100.0/24"))
	if err != nil || again.ID != r1.ID {
		t.Fatalf("AddRule again = %v, %v", again, err)
	}
	if w := f.writes(); len(w) != 0 {
		t.Errorf("re-adding a rule made writes: %v", w)
	}

	// An adjacent source: the compiled entry becomes the /23, applied as
	// the exact difference (add the /23, revoke the /24).
	f.resetCalls()
	r2, err := p.AddRule(ctx, target, mustParse(t, "tcp:22 from 198.51.101.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{self, "tcp|22|22|198.51.100.0/23"}) {
		t.Errorf("ingress after merge = %v", got)
	}
	if a, r := len(f.callsOf("AuthorizeSecurityGroupIngress")), len(f.callsOf("RevokeSecurityGroupIngress")); a != 1 || r != 1 {
		t.Errorf("Authorize/Revoke calls = %d/%d, want 1/1", a, r)
	}
	rules, err := p.ListRules(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := policy.NewRules(target, []compute.RuleSpec{mustParse(t, "tcp:22 from 198.51.100.0/24 # ops"), mustParse(t, "tcp:22 from 198.51.101.0/24")})
	if !slices.EqualFunc(rules, want, sameRule) {
		t.Errorf("ListRules = %v, want %v", rules, want)
	}

	// Revoking the first recompiles the rest: only the second /24 stays.
	f.resetCalls()
	if err := p.RevokeRule(ctx, r1.ID); err != nil {
		t.Fatalf("RevokeRule: %v", err)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{self, "tcp|22|22|198.51.101.0/24"}) {
		t.Errorf("ingress after revoke = %v", got)
	}
	rules, _ = p.ListRules(ctx, target)
	if len(rules) != 1 || rules[0].ID != r2.ID {
		t.Errorf("ListRules after revoke = %v", rules)
	}
	if err := p.RevokeRule(ctx, r1.ID); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("revoking twice: %v, want ErrNotFound", err)
	}
	if err := p.RevokeRule(ctx, r2.ID); err != nil {
		t.Fatal(err)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{self}) {
		t.Errorf("ingress after revoking everything = %v, want only the self rule", got)
	}
}

func TestSetRulesWire(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()
	other, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "svc", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	target := compute.InstanceTarget(inst.ID)
	isg := f.groupByName(instanceGroupName("test-owner", "svc"))

	specs := []compute.RuleSpec{
		mustParse(t, "udp:53 from cluster:other # dns"),
		mustParse(t, "icmp from 0.0.0.0/0"),
		mustParse(t, "icmpv6 from ::/0"),
		mustParse(t, "all from 192.0.2.0/24"),
		mustParse(t, "tcp:443 from 2001:db8::/32,203.0.113.0/24"),
	}
	f.resetCalls()
	got, err := p.SetRules(ctx, target, specs)
	if err != nil {
		t.Fatalf("SetRules: %v", err)
	}
	wantIngress := []string{
		"-1|-1|-1|192.0.2.0/24",
		"58|-1|-1|::/0",
		"icmp|-1|-1|0.0.0.0/0",
		"tcp|443|443|2001:db8::/32",
		"tcp|443|443|203.0.113.0/24",
		"udp|53|53|sg:" + other.ID,
	}
	if ing := f.ingress(isg.ID); !slices.Equal(ing, wantIngress) {
		t.Errorf("ingress = %v\nwant %v", ing, wantIngress)
	}
	if v := f.audit(map[string][]string{isg.ID: wantIngress}); len(v) > 0 {
		t.Errorf("audit: %v", v)
	}
	// The wire form of each kind of source and protocol.
	seen := map[string]bool{}
	for _, c := range f.callsOf("AuthorizeSecurityGroupIngress") {
		q := c.Params
		for i := 1; q.Has(key("IpPermissions", i, "IpProtocol")); i++ {
			proto := q.Get(key("IpPermissions", i, "IpProtocol"))
			seen[proto] = true
			switch proto {
			case "-1":
				if q.Has(key("IpPermissions", i, "FromPort")) {
					t.Errorf("all-protocol permission has ports: %v", q)
				}
			case "icmp", "58":
				if q.Get(key("IpPermissions", i, "FromPort")) != "-1" || q.Get(key("IpPermissions", i, "ToPort")) != "-1" {
					t.Errorf("%s permission should have type/code -1: %v", proto, q)
				}
			case "udp":
				if q.Get(key("IpPermissions", i, "Groups.1.GroupId")) != other.ID {
					t.Errorf("cluster source should be a group reference to %s: %v", other.ID, q)
				}
			}
		}
	}
	for _, proto := range []string{"-1", "icmp", "58", "tcp", "udp"} {
		if !seen[proto] {
			t.Errorf("no permission with protocol %q was sent", proto)
		}
	}
	listed, err := p.ListRules(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(listed, got, sameRule) {
		t.Errorf("ListRules = %v\nSetRules returned %v", listed, got)
	}
	for i, r := range listed {
		if r.ID != policy.RuleID(target, r.RuleSpec) {
			t.Errorf("rule %d ID %s is not policy's", i, r.ID)
		}
	}

	// Idempotent: the second call sends no write at all.
	f.resetCalls()
	if _, err := p.SetRules(ctx, target, specs); err != nil {
		t.Fatal(err)
	}
	if w := f.writes(); len(w) != 0 {
		t.Errorf("second SetRules made writes: %v", w)
	}

	// A rule someone added behind compute's back is revoked by the next
	// convergence (SetRules means exactly these rules).
	f.mu.Lock()
	f.addRule(&fRule{Group: isg.ID, Proto: "tcp", From: 22, To: 22, CIDR4: "0.0.0.0/0", Tags: map[string]string{}})
	f.mu.Unlock()
	if v := f.audit(map[string][]string{isg.ID: wantIngress}); len(v) != 1 {
		t.Errorf("audit should report the foreign port-22 rule: %v", v)
	}
	if _, err := p.SetRules(ctx, target, specs); err != nil {
		t.Fatal(err)
	}
	if ing := f.ingress(isg.ID); !slices.Equal(ing, wantIngress) {
		t.Errorf("ingress after converging = %v", ing)
	}

	// Set to a smaller set: the exact diff.
	f.resetCalls()
	if _, err := p.SetRules(ctx, target, specs[:1]); err != nil {
		t.Fatal(err)
	}
	if a := f.callsOf("AuthorizeSecurityGroupIngress"); len(a) != 0 {
		t.Errorf("shrinking the set authorized %d times", len(a))
	}
	if r := f.callsOf("RevokeSecurityGroupIngress"); len(r) != 1 || len(list(r[0].Params, "SecurityGroupRuleId")) != 5 {
		t.Errorf("revoke calls = %v", r)
	}
	if err := p.DeleteCluster(ctx, "other"); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("deleting a cluster a rule names as source: %v, want ErrConflict", err)
	}

	// Over the limit: ErrQuota and nothing sent.
	var many []compute.RuleSpec
	for i := range 61 {
		many = append(many, compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(uint16(2000 + 2*i)), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	}
	f.resetCalls()
	if _, err := p.SetRules(ctx, target, many); !errors.Is(err, compute.ErrQuota) {
		t.Errorf("61 entries: %v, want ErrQuota", err)
	}
	if w := f.writes(); len(w) != 0 {
		t.Errorf("a refused SetRules made writes: %v", w)
	}
	// Exactly 60 fit (the instance group has no self rule).
	if _, err := p.SetRules(ctx, target, many[:60]); err != nil {
		t.Errorf("60 entries: %v", err)
	}
	if n := len(f.ingress(isg.ID)); n != 60 {
		t.Errorf("ingress rules = %d, want 60", n)
	}
}

func key(prefix string, i int, rest string) string {
	return prefix + "." + strconv.Itoa(i) + "." + rest
}

func TestRulesSubsumedAndRehomed(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()
	cl, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	target := compute.ClusterTarget("c")
	self := "-1|-1|-1|sg:" + cl.ID
	wide, narrow := mustParse(t, "all from 10.0.0.0/8"), mustParse(t, "tcp:22 from 10.1.0.0/16")
	rules, err := p.SetRules(ctx, target, []compute.RuleSpec{wide, narrow})
	if err != nil {
		t.Fatal(err)
	}
	// The narrow rule adds nothing to the wide one: one native rule.
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{"-1|-1|-1|10.0.0.0/8", self}) {
		t.Errorf("ingress = %v", got)
	}
	listed, _ := p.ListRules(ctx, target)
	if !slices.EqualFunc(listed, rules, sameRule) {
		t.Errorf("ListRules = %v, want %v", listed, rules)
	}
	// A rule on the cluster that names the cluster itself shares the self
	// rule and survives its own revoke without touching the self rule.
	selfRule, err := p.AddRule(ctx, target, mustParse(t, "all from cluster:c"))
	if err != nil {
		t.Fatal(err)
	}
	wideID := policy.RuleID(target, wide)
	if err := p.RevokeRule(ctx, wideID); err != nil {
		t.Fatal(err)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{self, "tcp|22|22|10.1.0.0/16"}) {
		t.Errorf("ingress after revoking the wide rule = %v", got)
	}
	if err := p.RevokeRule(ctx, selfRule.ID); err != nil {
		t.Fatal(err)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{self, "tcp|22|22|10.1.0.0/16"}) {
		t.Errorf("ingress after revoking the self-named rule = %v", got)
	}
	listed, _ = p.ListRules(ctx, target)
	if len(listed) != 1 || listed[0].ID != policy.RuleID(target, narrow) {
		t.Errorf("ListRules = %v", listed)
	}
}

func TestRuleDefTagsRoundTripLong(t *testing.T) {
	var srcs []netip.Prefix
	for i := range 40 {
		srcs = append(srcs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i * 2), 0, 0}), 16))
	}
	spec := compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(80), SourceCIDRs: srcs, Description: "a long one"}
	r, err := policy.NewRule(compute.ClusterTarget("x"), spec)
	if err != nil {
		t.Fatal(err)
	}
	tags := ruleDefTags(r)
	if len(tags) < 2 {
		t.Fatalf("a %d-character definition should span several tags: %v", len(policy.Format(spec)), tags)
	}
	for k, v := range tags {
		if len([]rune(v)) > maxTagValue {
			t.Errorf("tag %s is %d characters", k, len(v))
		}
	}
	got := ruleDefs(tags)[r.ID]
	if got != policy.Format(r.RuleSpec) {
		t.Errorf("reassembled %q\nwant %q", got, policy.Format(r.RuleSpec))
	}
}

func TestTamperedDefinitionIgnored(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"}); err != nil {
		t.Fatal(err)
	}
	target := compute.ClusterTarget("c")
	r, err := p.AddRule(ctx, target, mustParse(t, "tcp:80 from 192.0.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	// Someone edits the stored definition to claim a wider rule.
	f.mu.Lock()
	for _, fr := range f.rules {
		if _, ok := fr.Tags[tagRulePrefix+r.ID]; ok {
			fr.Tags[tagRulePrefix+r.ID] = "tcp:1-65535 from 0.0.0.0/0"
		}
	}
	f.mu.Unlock()
	listed, err := p.ListRules(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 0 {
		t.Errorf("a definition that does not hash to its ID was listed: %v", listed)
	}
}
