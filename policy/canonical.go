package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"net/netip"
	"slices"
	"strings"

	"github.com/compute-sdk/compute"
	"go4.org/netipx"
)

// Canonical returns r with its sources merged (netipx.IPSet) and sorted,
// clusters sorted and de-duplicated. It allows exactly the packets r allows.
func Canonical(r compute.RuleSpec) compute.RuleSpec {
	r.SourceCIDRs = mergePrefixes(r.SourceCIDRs)
	r.SourceClusters = sortedUnique(r.SourceClusters)
	return r
}

// mergePrefixes returns the fewest prefixes covering exactly the addresses
// of ps, IPv4 before IPv6, each family in address order. Invalid prefixes
// (which validation rejects) are kept, after the valid ones, so that a
// caller that skipped validation still gets an error downstream instead of
// a silently narrowed rule.
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return nil
	}
	var b netipx.IPSetBuilder
	var bad []netip.Prefix
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Zone() != "" {
			if !slices.Contains(bad, p) {
				bad = append(bad, p)
			}
			continue
		}
		b.AddPrefix(p)
	}
	set, _ := b.IPSet() // errors only come from invalid prefixes, filtered above
	out := set.Prefixes()
	out = append(out, bad...)
	if len(out) == 0 {
		return nil
	}
	return out
}

func sortedUnique(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := slices.Clone(ss)
	slices.Sort(out)
	return slices.Compact(out)
}

// RuleID derives the stable ID of a rule on a target from its canonical
// content (description excluded): "fw-" and 16 hex digits.
func RuleID(target compute.Target, r compute.RuleSpec) string {
	r = Canonical(r)
	h := sha256.New()
	// Every field is length-prefixed so that no two different rules share
	// an encoding, whatever bytes their names hold.
	field(h, "compute-rule-v1")
	field(h, string(target.Kind))
	field(h, target.Name)
	field(h, string(r.Protocol))
	field(h, fmt.Sprintf("%d-%d", r.Ports.From, r.Ports.To))
	field(h, fmt.Sprint(len(r.SourceCIDRs)))
	for _, p := range r.SourceCIDRs {
		field(h, p.String())
	}
	field(h, fmt.Sprint(len(r.SourceClusters)))
	for _, c := range r.SourceClusters {
		field(h, c)
	}
	return "fw-" + hex.EncodeToString(h.Sum(nil))[:16]
}

func field(h hash.Hash, s string) {
	fmt.Fprintf(h, "%d:%s;", len(s), s)
}

// NewRule validates spec and returns the stored form: canonical, with its ID.
func NewRule(target compute.Target, spec compute.RuleSpec) (compute.FirewallRule, error) {
	if err := target.Validate(); err != nil {
		return compute.FirewallRule{}, err
	}
	if err := ValidateRule(spec); err != nil {
		return compute.FirewallRule{}, err
	}
	c := Canonical(spec)
	return compute.FirewallRule{ID: RuleID(target, c), Target: target, RuleSpec: c}, nil
}

// NewRules is NewRule for a list; duplicates (same ID) collapse to one. The
// result is sorted by ID.
func NewRules(target compute.Target, specs []compute.RuleSpec) ([]compute.FirewallRule, error) {
	out := make([]compute.FirewallRule, 0, len(specs))
	seen := make(map[string]bool, len(specs))
	for i, s := range specs {
		r, err := NewRule(target, s)
		if err != nil {
			if strings.HasPrefix(fieldOf(err), "target") {
				return nil, err
			}
			return nil, compute.PrefixField(fmt.Sprintf("rules[%d]", i), err)
		}
		if seen[r.ID] {
			continue // the first one's description wins
		}
		seen[r.ID] = true
		out = append(out, r)
	}
	sortByID(out)
	return out, nil
}

func fieldOf(err error) string {
	if fe, ok := err.(*compute.FieldError); ok {
		return fe.Field
	}
	return ""
}

func sortByID(rs []compute.FirewallRule) {
	slices.SortStableFunc(rs, func(a, b compute.FirewallRule) int { return strings.Compare(a.ID, b.ID) })
}

// Diff returns the rules to add and to revoke to go from current to desired,
// compared by ID. Both results are sorted by ID.
func Diff(current, desired []compute.FirewallRule) (add, revoke []compute.FirewallRule) {
	have := make(map[string]bool, len(current))
	for _, r := range current {
		have[r.ID] = true
	}
	want := make(map[string]bool, len(desired))
	for _, r := range desired {
		if !want[r.ID] && !have[r.ID] {
			add = append(add, r)
		}
		want[r.ID] = true
	}
	revoked := make(map[string]bool)
	for _, r := range current {
		if !want[r.ID] && !revoked[r.ID] {
			revoke = append(revoke, r)
			revoked[r.ID] = true
		}
	}
	sortByID(add)
	sortByID(revoke)
	return add, revoke
}
