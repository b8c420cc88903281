package aws

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

// How compute rules live in a security group.
//
// The group's ingress permissions are exactly policy.Compact of the
// target's rules (plus, on a cluster's group, the self rule): one native
// security group rule (sgr-...) per compiled entry, so AWS's quota of 60
// inbound rules per group is checked before anything is sent, and an
// add, revoke or set is the exact Authorize/Revoke difference between the
// current and the desired native rules.
//
// Compilation merges rules, so one native rule may serve several compute
// rules and a compute rule may need several native rules. Each compute
// rule's definition (policy.Format, description included) is stored as a
// tag "compute:rule:<rule ID>" on one native rule it overlaps (its "home"),
// so ListRules reads the rules back from AWS alone and they round-trip
// exactly. A rule's native rules are the ones whose entry it overlaps.

// perm is one native ingress permission with exactly one source.
type perm struct {
	Proto    string // "-1", "tcp", "udp", "icmp" or "58" (icmpv6)
	From, To int32  // -1 when the protocol has no ports
	CIDR     netip.Prefix
	Group    string // source security group ID
	// Other marks a native rule compute cannot express (a prefix list, an
	// unknown protocol); it is never desired, so a convergence revokes it.
	Other string
}

func (x perm) key() string {
	src := x.Group
	if x.CIDR.IsValid() {
		src = x.CIDR.String()
	}
	if x.Other != "" {
		src = "other:" + x.Other
	}
	return fmt.Sprintf("%s|%d|%d|%s", x.Proto, x.From, x.To, src)
}

func (x perm) ipPermission(desc string) types.IpPermission {
	ip := types.IpPermission{IpProtocol: awssdk.String(x.Proto)}
	if x.Proto != "-1" {
		ip.FromPort = awssdk.Int32(x.From)
		ip.ToPort = awssdk.Int32(x.To)
	}
	d := awssdk.String(desc)
	switch {
	case x.Group != "":
		ip.UserIdGroupPairs = []types.UserIdGroupPair{{GroupId: awssdk.String(x.Group), Description: d}}
	case x.CIDR.Addr().Is4():
		ip.IpRanges = []types.IpRange{{CidrIp: awssdk.String(x.CIDR.String()), Description: d}}
	default:
		ip.Ipv6Ranges = []types.Ipv6Range{{CidrIpv6: awssdk.String(x.CIDR.String()), Description: d}}
	}
	return ip
}

// entryPerm translates a compiled entry. groupOf resolves source clusters
// to their security group IDs.
func entryPerm(e policy.Entry, groupOf func(cluster string) (string, bool)) (perm, error) {
	x := perm{From: -1, To: -1}
	switch e.Protocol {
	case compute.ProtocolTCP, compute.ProtocolUDP:
		x.Proto = string(e.Protocol)
		x.From, x.To = int32(e.Ports.From), int32(e.Ports.To)
	case compute.ProtocolICMP:
		x.Proto = "icmp" // type -1, code -1: every ICMP message
	case compute.ProtocolICMPv6:
		x.Proto = "58"
	case compute.ProtocolAll:
		x.Proto = "-1"
	default:
		return perm{}, compute.InvalidField("protocol", string(e.Protocol), "unknown protocol")
	}
	if e.Cluster != "" {
		id, ok := groupOf(e.Cluster)
		if !ok {
			return perm{}, fmt.Errorf("aws: source cluster %q: %w", e.Cluster, compute.ErrNotFound)
		}
		x.Group = id
		return x, nil
	}
	if !e.Source.IsValid() {
		return perm{}, compute.InvalidField("sources", e.Source.String(), "invalid prefix")
	}
	x.CIDR = e.Source
	return x, nil
}

// ruleOf reads a native rule back.
func permOfRule(r types.SecurityGroupRule) perm {
	x := perm{Proto: awssdk.ToString(r.IpProtocol), From: awssdk.ToInt32(r.FromPort), To: awssdk.ToInt32(r.ToPort)}
	switch x.Proto {
	case "6":
		x.Proto = "tcp"
	case "17":
		x.Proto = "udp"
	case "1":
		x.Proto = "icmp"
	case "icmpv6":
		x.Proto = "58"
	}
	switch x.Proto {
	case "-1", "58", "icmp":
		// Every type/code (-1) is the only form compute creates; a
		// narrower ICMP rule keeps its numbers and is then not desired.
		if x.Proto == "-1" {
			x.From, x.To = -1, -1
		}
	case "tcp", "udp":
	default:
		x.Other = awssdk.ToString(r.SecurityGroupRuleId)
	}
	switch {
	case r.CidrIpv4 != nil:
		x.CIDR, _ = netip.ParsePrefix(*r.CidrIpv4)
	case r.CidrIpv6 != nil:
		x.CIDR, _ = netip.ParsePrefix(*r.CidrIpv6)
	case r.ReferencedGroupInfo != nil && r.ReferencedGroupInfo.GroupId != nil:
		x.Group = *r.ReferencedGroupInfo.GroupId
	default:
		x.Other = awssdk.ToString(r.SecurityGroupRuleId)
	}
	return x
}

// overlaps reports whether some packet is allowed by both r and e.
func overlaps(r compute.RuleSpec, e policy.Entry) bool {
	if r.Protocol != e.Protocol && r.Protocol != compute.ProtocolAll && e.Protocol != compute.ProtocolAll {
		return false
	}
	if r.Protocol.HasPorts() && e.Protocol.HasPorts() && (r.Ports.To < e.Ports.From || e.Ports.To < r.Ports.From) {
		return false
	}
	if e.Cluster != "" {
		return slices.Contains(r.SourceClusters, e.Cluster)
	}
	for _, p := range r.SourceCIDRs {
		if p.Overlaps(e.Source) {
			return true
		}
	}
	return false
}

// ruleDefTags returns the tags holding r's definition: its formatted form
// cut into tag-value-sized chunks, "compute:rule:<id>", then ":2", ":3".
func ruleDefTags(r compute.FirewallRule) map[string]string {
	s := []rune(policy.Format(r.RuleSpec))
	m := map[string]string{}
	for i, n := 0, 1; i < len(s) || i == 0; i, n = i+maxTagValue, n+1 {
		k := tagRulePrefix + r.ID
		if n > 1 {
			k += ":" + strconv.Itoa(n)
		}
		m[k] = string(s[i:min(i+maxTagValue, len(s))])
	}
	return m
}

// ruleDefs reassembles the rule definitions stored in tags, by rule ID.
func ruleDefs(tags map[string]string) map[string]string {
	parts := map[string]map[int]string{}
	for k, v := range tags {
		rest, ok := strings.CutPrefix(k, tagRulePrefix)
		if !ok {
			continue
		}
		id, nstr, chunked := strings.Cut(rest, ":")
		n := 1
		if chunked {
			var err error
			if n, err = strconv.Atoi(nstr); err != nil || n < 2 {
				continue
			}
		}
		if parts[id] == nil {
			parts[id] = map[int]string{}
		}
		parts[id][n] = v
	}
	out := map[string]string{}
	for id, ps := range parts {
		var b strings.Builder
		for n := 1; ; n++ {
			v, ok := ps[n]
			if !ok {
				break
			}
			b.WriteString(v)
		}
		out[id] = b.String()
	}
	return out
}

// nativeRule is an existing ingress rule of a group.
type nativeRule struct {
	ID    string
	Group string
	Perm  perm
	Tags  map[string]string
}

// groupRules lists the ingress rules of one group, or, with groupID "", of
// every group (owned rules only).
func (p *Provider) groupRules(ctx context.Context, groupID string) ([]nativeRule, error) {
	fs := []types.Filter{p.ownerFilter()}
	if groupID != "" {
		fs = []types.Filter{filter("group-id", groupID)}
	}
	var out []nativeRule
	pg := ec2.NewDescribeSecurityGroupRulesPaginator(p.ec2, &ec2.DescribeSecurityGroupRulesInput{Filters: fs})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, mapErr("describe security group rules", err)
		}
		for _, r := range page.SecurityGroupRules {
			if awssdk.ToBool(r.IsEgress) {
				continue
			}
			out = append(out, nativeRule{
				ID:    awssdk.ToString(r.SecurityGroupRuleId),
				Group: awssdk.ToString(r.GroupId),
				Perm:  permOfRule(r),
				Tags:  tagMap(r.Tags),
			})
		}
	}
	return out, nil
}

// targetGroup is a rule target and the security group holding its rules.
type targetGroup struct {
	target compute.Target
	group  group
	// cluster is set on a cluster's own group: it carries the self rule.
	cluster string
}

// targetGroupOf resolves a rule target to its security group.
func (p *Provider) targetGroupOf(ctx context.Context, t compute.Target) (targetGroup, error) {
	if err := t.Validate(); err != nil {
		return targetGroup{}, err
	}
	if t.Kind == compute.TargetCluster {
		g, err := p.clusterGroup(ctx, t.Name)
		if err != nil {
			return targetGroup{}, err
		}
		return targetGroup{target: t, group: g, cluster: t.Name}, nil
	}
	raw, err := p.getRaw(ctx, t.Name)
	if err != nil {
		return targetGroup{}, err
	}
	g, err := p.instanceGroup(ctx, tagMap(raw.Tags)[tagRefID])
	if err != nil {
		return targetGroup{}, err
	}
	return targetGroup{target: t, group: g}, nil
}

// instanceGroup returns the security group of the instance with the given
// idempotency key.
func (p *Provider) instanceGroup(ctx context.Context, key string) (group, error) {
	gs, err := p.describeGroups(ctx, false, filter("group-name", instanceGroupName(p.cfg.Owner, key)), filter("tag:"+tagKind, kindInstance))
	if err != nil {
		return group{}, err
	}
	if len(gs) == 0 {
		return group{}, fmt.Errorf("aws: security group of instance %q: %w", key, compute.ErrNotFound)
	}
	return gs[0], nil
}

// readRules reconstructs target's compute rules from the tags of its
// group's native rules. A definition whose content does not hash to its ID
// was changed outside compute; it is skipped (and logged), so the next
// SetRules restores the intended state.
func (p *Provider) readRules(tg targetGroup, native []nativeRule) []compute.FirewallRule {
	var out []compute.FirewallRule
	seen := map[string]bool{}
	for _, nr := range native {
		for id, def := range ruleDefs(nr.Tags) {
			if seen[id] {
				continue
			}
			spec, err := policy.Parse(def)
			if err != nil || policy.RuleID(tg.target, spec) != id {
				p.log.Warn("ignoring a rule definition that does not match its ID", "rule", id, "sgr", nr.ID, "def", def, "err", err)
				continue
			}
			seen[id] = true
			out = append(out, compute.FirewallRule{ID: id, Target: tg.target, RuleSpec: spec})
		}
	}
	slices.SortFunc(out, func(a, b compute.FirewallRule) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// selfEntry is the cluster's broad rule: every protocol from members.
func selfEntry(cluster string) policy.Entry {
	return policy.Entry{Protocol: compute.ProtocolAll, Cluster: cluster}
}

// desiredRule is one native rule the group must have.
type desiredRule struct {
	perm  perm
	entry policy.Entry
	tags  map[string]string
}

// plan computes the native rules tg's group must have for rules.
// withDefs=false leaves out the rule-definition tags (used before the
// instance ID, on which rule IDs depend, is known).
func (p *Provider) plan(tg targetGroup, rules []compute.FirewallRule, clusters map[string]group, current []nativeRule, withDefs bool) ([]desiredRule, error) {
	specs := make([]compute.RuleSpec, len(rules))
	for i, r := range rules {
		for _, c := range r.SourceClusters {
			if _, ok := clusters[c]; !ok {
				return nil, fmt.Errorf("aws: rule %s: source cluster %q: %w", r.ID, c, compute.ErrNotFound)
			}
		}
		specs[i] = r.RuleSpec
	}
	limit := ruleLimit
	if tg.cluster != "" {
		limit-- // the self rule
	}
	entries, err := policy.Compact(specs, limit)
	if err != nil {
		return nil, fmt.Errorf("aws: rules of %s: %w", tg.target, err)
	}
	groupOf := func(c string) (string, bool) {
		if c == tg.cluster {
			return tg.group.ID, true
		}
		g, ok := clusters[c]
		return g.ID, ok
	}
	var out []desiredRule
	byKey := map[string]int{}
	add := func(e policy.Entry, base string) error {
		x, err := entryPerm(e, groupOf)
		if err != nil {
			return err
		}
		if i, ok := byKey[x.key()]; ok {
			if base != "" {
				out[i].tags[tagBase] = base
			}
			return nil
		}
		t := map[string]string{tagOwner: p.cfg.Owner}
		if base != "" {
			t[tagBase] = base
		}
		byKey[x.key()] = len(out)
		out = append(out, desiredRule{perm: x, entry: e, tags: t})
		return nil
	}
	if tg.cluster != "" {
		if err := add(selfEntry(tg.cluster), "self"); err != nil {
			return nil, err
		}
	}
	for _, e := range entries {
		if err := add(e, ""); err != nil {
			return nil, err
		}
	}
	if !withDefs {
		return out, nil
	}

	// A rule keeps its current home while that native rule stays and still
	// overlaps it, so unrelated changes do not move definitions around.
	home := map[string]string{} // rule ID -> perm key
	for _, nr := range current {
		for id := range ruleDefs(nr.Tags) {
			home[id] = nr.Perm.key()
		}
	}
	for _, r := range rules {
		at := -1
		if k, ok := home[r.ID]; ok {
			if i, ok := byKey[k]; ok && overlaps(r.RuleSpec, out[i].entry) {
				at = i
			}
		}
		for i := 0; at < 0 && i < len(out); i++ {
			if overlaps(r.RuleSpec, out[i].entry) {
				at = i
			}
		}
		if at < 0 {
			// Compilation is lossless, so some entry admits the rule's
			// packets; reaching this is a bug, and storing the rule
			// nowhere would silently lose it.
			return nil, fmt.Errorf("aws: rule %s overlaps no compiled entry", r.ID)
		}
		maps.Copy(out[at].tags, ruleDefTags(r))
	}
	for _, d := range out {
		if len(d.tags) > maxTags {
			return nil, fmt.Errorf("aws: rules of %s: %d rule definitions share one native rule (%s); EC2 allows %d tags: %w",
				tg.target, len(d.tags)-1, d.entry, maxTags, compute.ErrQuota)
		}
	}
	return out, nil
}

// apply converges tg's group to exactly rules: it authorizes the missing
// native rules, revokes the extra ones and fixes the definition tags of
// those that stay. When nothing differs it sends no write request. When a
// concurrent change got there first (a duplicate or a vanished rule), it
// reads the group again and converges once more.
func (p *Provider) apply(ctx context.Context, tg targetGroup, rules []compute.FirewallRule, withDefs bool) error {
	err := p.applyOnce(ctx, tg, rules, withDefs)
	switch apiCode(err) {
	case "InvalidPermission.Duplicate", "InvalidSecurityGroupRuleId.NotFound", "InvalidPermission.NotFound":
		p.log.Debug("rules changed concurrently; converging again", "target", tg.target, "err", err)
		return p.applyOnce(ctx, tg, rules, withDefs)
	}
	return err
}

func (p *Provider) applyOnce(ctx context.Context, tg targetGroup, rules []compute.FirewallRule, withDefs bool) error {
	clusters, err := p.clusterGroups(ctx)
	if err != nil {
		return err
	}
	current, err := p.groupRules(ctx, tg.group.ID)
	if err != nil {
		return err
	}
	want, err := p.plan(tg, rules, clusters, current, withDefs)
	if err != nil {
		return err
	}

	wantByKey := make(map[string]desiredRule, len(want))
	for _, d := range want {
		wantByKey[d.perm.key()] = d
	}
	var revoke []string
	kept := map[string]nativeRule{}
	for _, nr := range current {
		k := nr.Perm.key()
		if _, ok := wantByKey[k]; !ok || kept[k].ID != "" {
			revoke = append(revoke, nr.ID)
			continue
		}
		kept[k] = nr
	}
	var toAdd []desiredRule
	for _, d := range want {
		if _, ok := kept[d.perm.key()]; !ok {
			toAdd = append(toAdd, d)
		}
	}

	// Add before revoking, so traffic that stays allowed is never dropped
	// while the rules change shape, unless the additions would not fit
	// next to the current rules.
	revokeFirst := len(current)+len(toAdd) > ruleLimit
	if revokeFirst {
		if err := p.revoke(ctx, tg.group.ID, revoke); err != nil {
			return err
		}
	}
	if err := p.authorize(ctx, tg.group.ID, toAdd); err != nil {
		return err
	}
	for k, nr := range kept {
		if err := p.fixTags(ctx, nr, wantByKey[k].tags, withDefs); err != nil {
			return err
		}
	}
	if !revokeFirst {
		return p.revoke(ctx, tg.group.ID, revoke)
	}
	return nil
}

// authorize adds native rules, one request per distinct tag set (the tags
// of a request apply to every rule it creates).
func (p *Provider) authorize(ctx context.Context, groupID string, rs []desiredRule) error {
	batches := map[string][]desiredRule{}
	var order []string
	for _, d := range rs {
		k := fmt.Sprint(tagList(d.tags))
		if _, ok := batches[k]; !ok {
			order = append(order, k)
		}
		batches[k] = append(batches[k], d)
	}
	for _, k := range order {
		b := batches[k]
		in := &ec2.AuthorizeSecurityGroupIngressInput{
			GroupId:           awssdk.String(groupID),
			TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroupRule, b[0].tags)},
		}
		for _, d := range b {
			in.IpPermissions = append(in.IpPermissions, d.perm.ipPermission(description(d)))
		}
		if _, err := p.ec2.AuthorizeSecurityGroupIngress(ctx, in); err != nil {
			return mapErr("authorize ingress on "+groupID, err)
		}
	}
	return nil
}

func (p *Provider) revoke(ctx context.Context, groupID string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := p.ec2.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{
		GroupId:              awssdk.String(groupID),
		SecurityGroupRuleIds: ids,
	})
	return mapErr("revoke ingress on "+groupID, err)
}

// fixTags makes the compute tags of a kept native rule equal want. Tags
// compute does not manage are left alone.
func (p *Provider) fixTags(ctx context.Context, nr nativeRule, want map[string]string, withDefs bool) error {
	set := map[string]string{}
	for k, v := range want {
		if nr.Tags[k] != v {
			set[k] = v
		}
	}
	var del []types.Tag
	for k := range nr.Tags {
		managed := k == tagBase || (withDefs && strings.HasPrefix(k, tagRulePrefix))
		if _, ok := want[k]; managed && !ok {
			del = append(del, types.Tag{Key: awssdk.String(k)})
		}
	}
	if len(set) > 0 {
		if _, err := p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{nr.ID}, Tags: tagList(set)}); err != nil {
			return mapErr("tag "+nr.ID, err)
		}
	}
	if len(del) > 0 {
		slices.SortFunc(del, func(a, b types.Tag) int { return cmp.Compare(*a.Key, *b.Key) })
		if _, err := p.ec2.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{nr.ID}, Tags: del}); err != nil {
			return mapErr("untag "+nr.ID, err)
		}
	}
	return nil
}

// description labels a native rule for people reading the AWS console,
// within the characters EC2 accepts in rule descriptions.
func description(d desiredRule) string {
	s := "compute " + d.entry.String()
	if d.tags[tagBase] == "self" {
		s = "compute cluster members"
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(" ._-:/()#,@[]+=&;{}!$*", r):
			return r
		}
		return '_'
	}, s)
	if len(s) > 255 {
		s = s[:255]
	}
	return s
}

// ListRules lists target's rules, sorted by ID.
func (p *Provider) ListRules(ctx context.Context, target compute.Target) ([]compute.FirewallRule, error) {
	tg, err := p.targetGroupOf(ctx, target)
	if err != nil {
		return nil, err
	}
	native, err := p.groupRules(ctx, tg.group.ID)
	if err != nil {
		return nil, err
	}
	return p.readRules(tg, native), nil
}

// AddRule adds a rule to target; adding an existing rule changes nothing.
func (p *Provider) AddRule(ctx context.Context, target compute.Target, spec compute.RuleSpec) (*compute.FirewallRule, error) {
	r, err := policy.NewRule(target, spec)
	if err != nil {
		return nil, err
	}
	tg, err := p.targetGroupOf(ctx, target)
	if err != nil {
		return nil, err
	}
	native, err := p.groupRules(ctx, tg.group.ID)
	if err != nil {
		return nil, err
	}
	rules := p.readRules(tg, native)
	for _, have := range rules {
		if have.ID == r.ID {
			return &have, nil
		}
	}
	if err := p.apply(ctx, tg, append(rules, r), true); err != nil {
		return nil, err
	}
	return &r, nil
}

// RevokeRule removes the rule with the given ID from whatever target holds
// it. The target's remaining rules are compiled again and the difference
// applied, so a revoke never opens or closes another rule's traffic.
func (p *Provider) RevokeRule(ctx context.Context, id string) error {
	all, err := p.groupRules(ctx, "")
	if err != nil {
		return err
	}
	groupID := ""
	for _, nr := range all {
		if _, ok := ruleDefs(nr.Tags)[id]; ok {
			groupID = nr.Group
			break
		}
	}
	if groupID == "" {
		return fmt.Errorf("aws: rule %q: %w", id, compute.ErrNotFound)
	}
	gs, err := p.describeGroups(ctx, false, filter("group-id", groupID))
	if err != nil {
		return err
	}
	if len(gs) == 0 {
		return fmt.Errorf("aws: rule %q: group %s: %w", id, groupID, compute.ErrNotFound)
	}
	g := gs[0]
	tg := targetGroup{group: g}
	switch g.Tags[tagKind] {
	case kindCluster:
		tg.cluster = g.Tags[tagCluster]
		tg.target = compute.ClusterTarget(tg.cluster)
	case kindInstance:
		if g.Tags[tagInstanceID] == "" {
			return fmt.Errorf("aws: rule %q: group %s has no instance yet: %w", id, g.ID, compute.ErrConflict)
		}
		tg.target = compute.InstanceTarget(g.Tags[tagInstanceID])
	default:
		return fmt.Errorf("aws: rule %q: group %s is not a compute target: %w", id, g.ID, compute.ErrNotFound)
	}
	native, err := p.groupRules(ctx, g.ID)
	if err != nil {
		return err
	}
	var keep []compute.FirewallRule
	found := false
	for _, r := range p.readRules(tg, native) {
		if r.ID == id {
			found = true
			continue
		}
		keep = append(keep, r)
	}
	if !found {
		return fmt.Errorf("aws: rule %q: %w", id, compute.ErrNotFound)
	}
	return p.apply(ctx, tg, keep, true)
}

// SetRules converges target's rules to exactly specs. A second call with
// the same rules sends no write request.
func (p *Provider) SetRules(ctx context.Context, target compute.Target, specs []compute.RuleSpec) ([]compute.FirewallRule, error) {
	rules, err := policy.NewRules(target, specs)
	if err != nil {
		return nil, err
	}
	tg, err := p.targetGroupOf(ctx, target)
	if err != nil {
		return nil, err
	}
	if err := p.apply(ctx, tg, rules, true); err != nil {
		return nil, err
	}
	return rules, nil
}
