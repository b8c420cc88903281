package compute

import (
	"fmt"
	"net/netip"
)

// Protocol is an IP protocol a rule allows.
type Protocol string

const (
	ProtocolTCP    Protocol = "tcp"
	ProtocolUDP    Protocol = "udp"
	ProtocolICMP   Protocol = "icmp"
	ProtocolICMPv6 Protocol = "icmpv6"
	// ProtocolAll allows every protocol (and every port).
	ProtocolAll Protocol = "all"
)

// HasPorts reports whether rules of this protocol carry a port range.
func (p Protocol) HasPorts() bool { return p == ProtocolTCP || p == ProtocolUDP }

// Valid reports whether p is one of the defined protocols.
func (p Protocol) Valid() bool {
	switch p {
	case ProtocolTCP, ProtocolUDP, ProtocolICMP, ProtocolICMPv6, ProtocolAll:
		return true
	}
	return false
}

// PortRange is an inclusive range of ports. The zero value means "no ports"
// and is the only valid value for icmp, icmpv6 and all.
type PortRange struct {
	From uint16 `json:"from"`
	To   uint16 `json:"to"`
}

// Port returns the range holding one port.
func Port(p uint16) PortRange { return PortRange{From: p, To: p} }

// Ports returns the range from..to.
func Ports(from, to uint16) PortRange { return PortRange{From: from, To: to} }

// IsZero reports whether r is the zero range.
func (r PortRange) IsZero() bool { return r.From == 0 && r.To == 0 }

// Contains reports whether port is in r.
func (r PortRange) Contains(port uint16) bool { return port >= r.From && port <= r.To }

func (r PortRange) String() string {
	if r.From == r.To {
		return fmt.Sprint(r.From)
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// TargetKind says what a rule applies to.
type TargetKind string

const (
	TargetInstance TargetKind = "instance"
	TargetCluster  TargetKind = "cluster"
)

// Target is what a firewall rule protects: one instance (by ID) or every
// member of a cluster (by name).
type Target struct {
	Kind TargetKind `json:"kind"`
	// Name is the instance ID or the cluster name.
	Name string `json:"name"`
}

// InstanceTarget targets the instance with the given ID.
func InstanceTarget(id string) Target { return Target{Kind: TargetInstance, Name: id} }

// ClusterTarget targets every member of the named cluster.
func ClusterTarget(name string) Target { return Target{Kind: TargetCluster, Name: name} }

func (t Target) String() string { return string(t.Kind) + ":" + t.Name }

// Validate checks that t names an instance or a cluster.
func (t Target) Validate() error {
	switch t.Kind {
	case TargetInstance, TargetCluster:
	default:
		return InvalidField("target.kind", string(t.Kind), `must be "instance" or "cluster"`)
	}
	if t.Name == "" {
		return InvalidField("target.name", "", "must not be empty")
	}
	return nil
}

// RuleSpec is what an ingress rule allows: a protocol, a port range (tcp and
// udp only) and the sources it is allowed from. Sources are CIDRs (IPv4 or
// IPv6) and/or clusters; a rule must name at least one source. Egress is
// always allowed and has no rules.
type RuleSpec struct {
	Protocol Protocol  `json:"protocol"`
	Ports    PortRange `json:"ports"`
	// SourceCIDRs are canonical prefixes (no host bits set). A CIDR matches
	// any sender inside it, instances of other clusters included.
	SourceCIDRs []netip.Prefix `json:"sourceCidrs,omitempty"`
	// SourceClusters matches members of the named clusters.
	SourceClusters []string `json:"sourceClusters,omitempty"`
	Description    string   `json:"description,omitempty"`
}

// FirewallRule is an ingress rule as stored by a provider. ID is derived
// from the target and the rule's content by package policy, so the same rule
// has the same ID on every provider and across calls.
type FirewallRule struct {
	ID     string `json:"id"`
	Target Target `json:"target"`
	RuleSpec
}
