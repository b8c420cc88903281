// Package policy turns firewall rules into the compiled ingress policy every
// provider enforces. It is pure: no I/O, no globals, no side effects.
package policy

import (
	"net/netip"

	"github.com/compute-sdk/compute"
	"go4.org/netipx"
)

// ValidateRule checks one rule: a known protocol; ports 1-65535 with
// From <= To on tcp/udp and no ports on icmp/icmpv6/all; canonical CIDRs
// (no host bits); icmp sources IPv4 only and icmpv6 sources IPv6 only; valid
// cluster names; at least one source. Errors are *compute.FieldError.
func ValidateRule(r compute.RuleSpec) error { panic("policy: not implemented yet") }

// ValidateRules checks each rule, naming the failing one as field[i].
func ValidateRules(field string, rules []compute.RuleSpec) error { panic("policy: not implemented yet") }

// ValidateInstanceSpec checks the whole spec, rules included.
func ValidateInstanceSpec(s compute.InstanceSpec) error { panic("policy: not implemented yet") }

// Canonical returns r with its sources merged (netipx.IPSet) and sorted,
// clusters sorted and de-duplicated. It allows exactly the packets r allows.
func Canonical(r compute.RuleSpec) compute.RuleSpec { panic("policy: not implemented yet") }

// RuleID derives the stable ID of a rule on a target from its canonical
// content (description excluded): "fw-" and 16 hex digits.
func RuleID(target compute.Target, r compute.RuleSpec) string { panic("policy: not implemented yet") }

// NewRule validates spec and returns the stored form: canonical, with its ID.
func NewRule(target compute.Target, spec compute.RuleSpec) (compute.FirewallRule, error) {
	panic("policy: not implemented yet")
}

// NewRules is NewRule for a list; duplicates (same ID) collapse to one. The
// result is sorted by ID.
func NewRules(target compute.Target, specs []compute.RuleSpec) ([]compute.FirewallRule, error) {
	panic("policy: not implemented yet")
}

// Diff returns the rules to add and to revoke to go from current to desired,
// compared by ID. Both results are sorted by ID.
func Diff(current, desired []compute.FirewallRule) (add, revoke []compute.FirewallRule) {
	panic("policy: not implemented yet")
}

// Normalize merges rules losslessly (overlapping/adjacent port ranges with
// the same sources, sources of rules with the same protocol and ports) and
// returns them in a stable order. Normalize is idempotent and the result
// allows exactly the packets the input allows.
func Normalize(rules []compute.RuleSpec) []compute.RuleSpec { panic("policy: not implemented yet") }

// Entry is one compiled allow entry: a protocol, a port range (zero for
// icmp/icmpv6/all) and exactly one source, a prefix or a cluster. Providers
// whose native rules hold one source each (nftables set elements, AWS rule
// quota accounting) work on entries.
type Entry struct {
	Protocol compute.Protocol
	Ports    compute.PortRange
	Source   netip.Prefix // valid when Cluster == ""
	Cluster  string
}

// Compile turns rules into the fewest entries that allow exactly the same
// packets, in a stable order.
func Compile(rules []compute.RuleSpec) []Entry { panic("policy: not implemented yet") }

// Compact compiles rules and fails with an error wrapping compute.ErrQuota
// when the result needs more than limit entries (limit <= 0: no limit). It
// never widens access to fit.
func Compact(rules []compute.RuleSpec, limit int) ([]Entry, error) {
	panic("policy: not implemented yet")
}

// Packet is an inbound packet, as far as the policy cares.
type Packet struct {
	Protocol compute.Protocol // tcp, udp, icmp or icmpv6 (never "all")
	Port     uint16           // destination port for tcp/udp
	Src      netip.Addr
	// SrcCluster is the cluster of the sending instance, "" for senders
	// that are not instances of this provider.
	SrcCluster string
}

// Policy is the compiled ingress policy of one instance: default deny, plus
// replies to its own connections (established/related), plus every packet
// from members of its own cluster, plus its own and its cluster's rules.
type Policy struct {
	Instance string
	Cluster  string
	// Rules are the instance's and its cluster's rules, normalised.
	Rules []compute.RuleSpec
}

// Effective returns the policy of inst given the rules of the provider (rules
// of other targets are ignored).
func Effective(inst compute.Instance, rules []compute.FirewallRule) *Policy {
	panic("policy: not implemented yet")
}

// Allows reports whether a new inbound connection/packet pkt is accepted.
func (p *Policy) Allows(pkt Packet) bool { panic("policy: not implemented yet") }

// Parse reads the human rule syntax:
//
//	tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32
//	udp:53 from cluster:train
//	icmp from 0.0.0.0/0
//	all from cluster:a,192.168.0.0/16
//
// An optional trailing `# description` sets the description.
func Parse(s string) (compute.RuleSpec, error) { panic("policy: not implemented yet") }

// Format writes r in the syntax Parse reads; Parse(Format(r)) equals
// Canonical(r).
func Format(r compute.RuleSpec) string { panic("policy: not implemented yet") }

var _ netipx.IPSet
