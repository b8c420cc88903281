package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/compute-sdk/compute"
	"go4.org/netipx"
)

// Normalisation and compilation are a fixed point of a few lossless
// rewrites, each of which keeps the set of allowed (protocol, port, source)
// tuples exactly as it is:
//
//   - subsumption by "all": a source that an all-protocol rule already
//     admits gains nothing from a narrower rule, so the narrower rule drops
//     it (only whole prefixes contained in the all-rule's set are dropped:
//     splitting a prefix would be lossless too, but would grow the rules);
//   - same protocol and ports: sources are unioned (netipx.IPSet);
//   - same protocol and sources: overlapping or adjacent port ranges merge.
//
// Every rewrite that changes anything strictly lowers the number of rules
// plus sources, so the loop ends, and its result is a fixed point: feeding
// it back changes nothing, which is what makes Normalize idempotent.

// Normalize merges rules losslessly (overlapping/adjacent port ranges with
// the same sources, sources of rules with the same protocol and ports) and
// returns them in a stable order. Normalize is idempotent and the result
// allows exactly the packets the input allows.
//
// Merged rules keep their description when all of them share it; otherwise
// the description is dropped. Rules without any source allow nothing and
// are dropped.
func Normalize(rules []compute.RuleSpec) []compute.RuleSpec {
	rs := make([]compute.RuleSpec, 0, len(rules))
	for _, r := range rules {
		r = Canonical(r)
		if len(r.SourceCIDRs)+len(r.SourceClusters) > 0 {
			rs = append(rs, r)
		}
	}
	for {
		var c1, c2, c3 bool
		rs, c1 = subsumeRules(rs)
		rs, c2 = mergeSamePorts(rs)
		rs, c3 = mergeSameSources(rs)
		if !c1 && !c2 && !c3 {
			break
		}
	}
	slices.SortFunc(rs, compareRules)
	if len(rs) == 0 {
		return nil
	}
	return rs
}

// allSources collects what the all-protocol rules admit.
type allSources struct {
	ranges   []netipx.IPRange // sorted, disjoint (from an IPSet)
	clusters map[string]bool
}

// coversPrefix reports whether p lies entirely inside the set. It is
// IPSet.ContainsPrefix with a binary search instead of a scan, which
// matters when thousands of entries are checked against a large set.
func (a allSources) coversPrefix(p netip.Prefix) bool {
	if !p.IsValid() || len(a.ranges) == 0 {
		return false
	}
	r := netipx.RangeOfPrefix(p.Masked())
	// The last range starting at or before r.From() is the only candidate.
	i, found := slices.BinarySearchFunc(a.ranges, r.From(), func(x netipx.IPRange, t netip.Addr) int {
		return x.From().Compare(t)
	})
	if !found {
		i--
	}
	return i >= 0 && a.ranges[i].To().Compare(r.To()) >= 0
}

func collectAll[T any](items []T, proto func(T) compute.Protocol, add func(T, *netipx.IPSetBuilder, map[string]bool)) allSources {
	var b netipx.IPSetBuilder
	cl := map[string]bool{}
	for _, it := range items {
		if proto(it) == compute.ProtocolAll {
			add(it, &b, cl)
		}
	}
	set, _ := b.IPSet()
	return allSources{ranges: set.Ranges(), clusters: cl}
}

func subsumeRules(rs []compute.RuleSpec) ([]compute.RuleSpec, bool) {
	all := collectAll(rs, func(r compute.RuleSpec) compute.Protocol { return r.Protocol },
		func(r compute.RuleSpec, b *netipx.IPSetBuilder, cl map[string]bool) {
			for _, p := range r.SourceCIDRs {
				if p.IsValid() {
					b.AddPrefix(p)
				}
			}
			for _, c := range r.SourceClusters {
				cl[c] = true
			}
		})
	if len(all.clusters) == 0 && len(all.ranges) == 0 {
		return rs, false
	}
	changed := false
	out := rs[:0]
	for _, r := range rs {
		if r.Protocol != compute.ProtocolAll {
			n := len(r.SourceCIDRs) + len(r.SourceClusters)
			r.SourceCIDRs = slices.DeleteFunc(slices.Clone(r.SourceCIDRs), all.coversPrefix)
			r.SourceClusters = slices.DeleteFunc(slices.Clone(r.SourceClusters), func(c string) bool { return all.clusters[c] })
			if len(r.SourceCIDRs) == 0 {
				r.SourceCIDRs = nil
			}
			if len(r.SourceClusters) == 0 {
				r.SourceClusters = nil
			}
			if len(r.SourceCIDRs)+len(r.SourceClusters) != n {
				changed = true
			}
			if len(r.SourceCIDRs)+len(r.SourceClusters) == 0 {
				continue
			}
		}
		out = append(out, r)
	}
	return out, changed
}

type protoPorts struct {
	proto compute.Protocol
	ports compute.PortRange
}

// mergeSamePorts unions the sources of rules with the same protocol and
// ports.
func mergeSamePorts(rs []compute.RuleSpec) ([]compute.RuleSpec, bool) {
	idx := make(map[protoPorts]int, len(rs))
	var groups [][]compute.RuleSpec
	for _, r := range rs {
		k := protoPorts{r.Protocol, r.Ports}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	if len(groups) == len(rs) {
		return rs, false
	}
	out := make([]compute.RuleSpec, 0, len(groups))
	for _, g := range groups {
		if len(g) == 1 {
			out = append(out, g[0])
			continue
		}
		m := g[0]
		var cidrs []netip.Prefix
		var clusters []string
		for _, r := range g {
			cidrs = append(cidrs, r.SourceCIDRs...)
			clusters = append(clusters, r.SourceClusters...)
			if r.Description != m.Description {
				m.Description = ""
			}
		}
		m.SourceCIDRs = mergePrefixes(cidrs)
		m.SourceClusters = sortedUnique(clusters)
		out = append(out, m)
	}
	return out, true
}

// sourcesKey identifies a canonical source list.
func sourcesKey(r compute.RuleSpec) string {
	var b strings.Builder
	for _, p := range r.SourceCIDRs {
		b.WriteString(p.String())
		b.WriteByte(',')
	}
	b.WriteByte('|')
	for _, c := range r.SourceClusters {
		b.WriteString(c)
		b.WriteByte(',')
	}
	return b.String()
}

// mergeSameSources merges overlapping or adjacent port ranges of tcp/udp
// rules with the same sources.
func mergeSameSources(rs []compute.RuleSpec) ([]compute.RuleSpec, bool) {
	type key struct {
		proto   compute.Protocol
		sources string
	}
	idx := map[key]int{}
	var groups [][]compute.RuleSpec
	var out []compute.RuleSpec
	for _, r := range rs {
		if !r.Protocol.HasPorts() || !validRange(r.Ports) {
			out = append(out, r)
			continue
		}
		k := key{r.Protocol, sourcesKey(r)}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	changed := false
	for _, g := range groups {
		if len(g) == 1 {
			out = append(out, g[0])
			continue
		}
		slices.SortStableFunc(g, func(a, b compute.RuleSpec) int { return comparePorts(a.Ports, b.Ports) })
		cur := g[0]
		for _, r := range g[1:] {
			if touches(cur.Ports, r.Ports) {
				cur.Ports.To = max(cur.Ports.To, r.Ports.To)
				if r.Description != cur.Description {
					cur.Description = ""
				}
				changed = true
				continue
			}
			out = append(out, cur)
			cur = r
		}
		out = append(out, cur)
	}
	return out, changed
}

func validRange(p compute.PortRange) bool { return p.From >= 1 && p.From <= p.To }

// touches reports whether b (which starts at or after a) overlaps a or
// starts right after it.
func touches(a, b compute.PortRange) bool {
	return int(b.From) <= int(a.To)+1
}

func comparePorts(a, b compute.PortRange) int {
	if c := cmp.Compare(a.From, b.From); c != 0 {
		return c
	}
	return cmp.Compare(a.To, b.To)
}

func protoRank(p compute.Protocol) int {
	switch p {
	case compute.ProtocolTCP:
		return 0
	case compute.ProtocolUDP:
		return 1
	case compute.ProtocolICMP:
		return 2
	case compute.ProtocolICMPv6:
		return 3
	case compute.ProtocolAll:
		return 4
	}
	return 5
}

func compareProto(a, b compute.Protocol) int {
	if c := cmp.Compare(protoRank(a), protoRank(b)); c != 0 {
		return c
	}
	return strings.Compare(string(a), string(b))
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func compareRules(a, b compute.RuleSpec) int {
	if c := compareProto(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := comparePorts(a.Ports, b.Ports); c != 0 {
		return c
	}
	if c := slices.CompareFunc(a.SourceCIDRs, b.SourceCIDRs, comparePrefix); c != 0 {
		return c
	}
	if c := slices.Compare(a.SourceClusters, b.SourceClusters); c != 0 {
		return c
	}
	return strings.Compare(a.Description, b.Description)
}

// Compile turns rules into the fewest entries that allow exactly the same
// packets, in a stable order. (The fewest that lossless merging finds:
// Compile merges sources, port ranges and entries that a wider entry
// already covers; it does not search for a global optimum.)
func Compile(rules []compute.RuleSpec) []Entry {
	var es []Entry
	for _, r := range Normalize(rules) {
		for _, p := range r.SourceCIDRs {
			es = append(es, Entry{Protocol: r.Protocol, Ports: r.Ports, Source: p})
		}
		for _, c := range r.SourceClusters {
			es = append(es, Entry{Protocol: r.Protocol, Ports: r.Ports, Cluster: c})
		}
	}
	es = dedupEntries(es)
	for {
		var c1, c2, c3 bool
		es, c1 = subsumeEntries(es)
		es, c2 = mergeEntryPrefixes(es)
		es, c3 = mergeEntryPorts(es)
		if !c1 && !c2 && !c3 {
			break
		}
	}
	slices.SortFunc(es, compareEntries)
	return es
}

func dedupEntries(es []Entry) []Entry {
	seen := make(map[Entry]bool, len(es))
	out := es[:0]
	for _, e := range es {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}

type protoSource struct {
	proto   compute.Protocol
	source  netip.Prefix
	cluster string
}

// subsumeEntries drops entries that another entry already covers: one with
// protocol all and the same or a wider source, or one with the same
// protocol, a wider or equal port range and a strictly wider prefix.
func subsumeEntries(es []Entry) ([]Entry, bool) {
	all := collectAll(es, func(e Entry) compute.Protocol { return e.Protocol },
		func(e Entry, b *netipx.IPSetBuilder, cl map[string]bool) {
			if e.Cluster != "" {
				cl[e.Cluster] = true
			} else if e.Source.IsValid() {
				b.AddPrefix(e.Source)
			}
		})
	// Port ranges by (protocol, prefix), and the prefix lengths in use per
	// family, so that looking for a wider entry costs one map lookup per
	// length that exists rather than one per bit.
	type protoPrefix struct {
		rank int
		p    netip.Prefix
	}
	ranges := make(map[protoPrefix][]compute.PortRange, len(es))
	var lengths [2][129]bool // [is6][bits]
	for _, e := range es {
		if e.Cluster == "" && e.Source.IsValid() {
			k := protoPrefix{protoRank(e.Protocol), e.Source}
			ranges[k] = append(ranges[k], e.Ports)
			lengths[boolRank(e.Source.Addr().Is6())][e.Source.Bits()] = true
		}
	}
	covered := func(e Entry) bool {
		if e.Protocol != compute.ProtocolAll {
			if e.Cluster != "" {
				return all.clusters[e.Cluster]
			}
			if all.coversPrefix(e.Source) {
				return true
			}
		}
		// protoRank folds unknown protocols together; leave those alone.
		if e.Cluster != "" || !e.Source.IsValid() || !e.Protocol.Valid() {
			return false
		}
		// Ancestors only (strictly shorter prefixes): an entry never
		// removes itself, and the chain of coverers always ends at an
		// entry that is kept.
		used := &lengths[boolRank(e.Source.Addr().Is6())]
		for bits := e.Source.Bits() - 1; bits >= 0; bits-- {
			if !used[bits] {
				continue
			}
			anc := netip.PrefixFrom(e.Source.Addr(), bits).Masked()
			for _, pr := range ranges[protoPrefix{protoRank(e.Protocol), anc}] {
				if pr.From <= e.Ports.From && e.Ports.To <= pr.To {
					return true
				}
			}
		}
		return false
	}
	out := make([]Entry, 0, len(es))
	for _, e := range es {
		if !covered(e) {
			out = append(out, e)
		}
	}
	return out, len(out) != len(es)
}

// mergeEntryPrefixes unions prefixes of entries with the same protocol and
// ports.
func mergeEntryPrefixes(es []Entry) ([]Entry, bool) {
	idx := map[protoPorts]int{}
	var groups [][]netip.Prefix
	var keys []protoPorts
	var out []Entry
	for _, e := range es {
		if e.Cluster != "" || !e.Source.IsValid() {
			out = append(out, e)
			continue
		}
		k := protoPorts{e.Protocol, e.Ports}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
			keys = append(keys, k)
		}
		groups[i] = append(groups[i], e.Source)
	}
	changed := false
	for i, g := range groups {
		merged := g
		if len(g) > 1 {
			merged = mergePrefixes(g)
			if len(merged) != len(g) {
				changed = true
			}
		}
		for _, p := range merged {
			out = append(out, Entry{Protocol: keys[i].proto, Ports: keys[i].ports, Source: p})
		}
	}
	return out, changed
}

// mergeEntryPorts merges overlapping or adjacent port ranges of tcp/udp
// entries with the same source.
func mergeEntryPorts(es []Entry) ([]Entry, bool) {
	idx := map[protoSource]int{}
	var groups [][]Entry
	var out []Entry
	for _, e := range es {
		if !e.Protocol.HasPorts() || !validRange(e.Ports) {
			out = append(out, e)
			continue
		}
		k := protoSource{e.Protocol, e.Source, e.Cluster}
		i, ok := idx[k]
		if !ok {
			i = len(groups)
			idx[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], e)
	}
	changed := false
	for _, g := range groups {
		if len(g) == 1 {
			out = append(out, g[0])
			continue
		}
		slices.SortFunc(g, func(a, b Entry) int { return comparePorts(a.Ports, b.Ports) })
		cur := g[0]
		for _, e := range g[1:] {
			if touches(cur.Ports, e.Ports) {
				cur.Ports.To = max(cur.Ports.To, e.Ports.To)
				changed = true
				continue
			}
			out = append(out, cur)
			cur = e
		}
		out = append(out, cur)
	}
	return out, changed
}

func compareEntries(a, b Entry) int {
	if c := compareProto(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := comparePorts(a.Ports, b.Ports); c != 0 {
		return c
	}
	// Prefixes before clusters.
	if c := cmp.Compare(boolRank(a.Cluster != ""), boolRank(b.Cluster != "")); c != 0 {
		return c
	}
	if c := comparePrefix(a.Source, b.Source); c != 0 {
		return c
	}
	return strings.Compare(a.Cluster, b.Cluster)
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Compact compiles rules and fails with an error wrapping compute.ErrQuota
// when the result needs more than limit entries (limit <= 0: no limit). It
// never widens access to fit.
func Compact(rules []compute.RuleSpec, limit int) ([]Entry, error) {
	es := Compile(rules)
	if limit > 0 && len(es) > limit {
		return nil, fmt.Errorf("policy: the rules need %d entries after lossless merging, the limit is %d: %w", len(es), limit, compute.ErrQuota)
	}
	return es, nil
}

// String formats e for logs and errors, e.g. "tcp:22 from 10.0.0.0/8".
func (e Entry) String() string {
	r := compute.RuleSpec{Protocol: e.Protocol, Ports: e.Ports}
	if e.Cluster != "" {
		r.SourceClusters = []string{e.Cluster}
	} else {
		r.SourceCIDRs = []netip.Prefix{e.Source}
	}
	return Format(r)
}

// Allows reports whether the entry admits pkt.
func (e Entry) Allows(pkt Packet) bool {
	if !protoMatches(e.Protocol, e.Ports, pkt) {
		return false
	}
	if e.Cluster != "" {
		return pkt.SrcCluster == e.Cluster
	}
	return e.Source.IsValid() && e.Source.Contains(pkt.Src.Unmap())
}
