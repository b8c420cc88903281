// Package policy turns firewall rules into the compiled ingress policy every
// provider enforces. It is pure: no I/O, no globals, no side effects.
//
// A rule allows a set of (protocol, port, source) tuples; everything this
// package does to rules (Canonical, Normalize, Compile, Compact) keeps that
// set exactly as it is. It may merge, split or reorder rules, but it never
// widens or narrows what they allow.
package policy

import (
	"net/netip"

	"github.com/compute-sdk/compute"
)

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
