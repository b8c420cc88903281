package policy

import (
	"slices"

	"github.com/compute-sdk/compute"
)

// Effective returns the policy of inst given the rules of the provider (rules
// of other targets are ignored).
func Effective(inst compute.Instance, rules []compute.FirewallRule) *Policy {
	var specs []compute.RuleSpec
	for _, r := range rules {
		if appliesTo(r.Target, inst) {
			specs = append(specs, r.RuleSpec)
		}
	}
	return &Policy{Instance: inst.ID, Cluster: inst.Cluster, Rules: Normalize(specs)}
}

func appliesTo(t compute.Target, inst compute.Instance) bool {
	switch t.Kind {
	case compute.TargetInstance:
		return t.Name != "" && t.Name == inst.ID
	case compute.TargetCluster:
		return inst.Cluster != "" && t.Name == inst.Cluster
	}
	return false
}

// Allows reports whether a new inbound connection/packet pkt is accepted.
//
// Replies to the instance's own connections (established/related) are
// always accepted and are not what Allows is about: pkt is the first packet
// of a flow someone else starts.
func (p *Policy) Allows(pkt Packet) bool {
	// Members of one cluster reach each other on everything. An instance
	// without a cluster has no peers, whatever pkt claims.
	if p.Cluster != "" && pkt.SrcCluster == p.Cluster {
		return true
	}
	for _, r := range p.Rules {
		if RuleAllows(r, pkt) {
			return true
		}
	}
	return false
}

// RuleAllows reports whether the single rule r admits pkt.
func RuleAllows(r compute.RuleSpec, pkt Packet) bool {
	if !protoMatches(r.Protocol, r.Ports, pkt) {
		return false
	}
	if pkt.SrcCluster != "" && slices.Contains(r.SourceClusters, pkt.SrcCluster) {
		return true
	}
	src := pkt.Src.Unmap()
	if !src.IsValid() {
		return false
	}
	for _, pr := range r.SourceCIDRs {
		if pr.IsValid() && pr.Contains(src) {
			return true
		}
	}
	return false
}

func protoMatches(proto compute.Protocol, ports compute.PortRange, pkt Packet) bool {
	if proto == compute.ProtocolAll {
		return true
	}
	if proto != pkt.Protocol {
		return false
	}
	if proto.HasPorts() {
		return ports.Contains(pkt.Port)
	}
	return true
}
