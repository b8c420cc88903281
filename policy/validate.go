package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/compute-sdk/compute"
)

// MaxDescription is the longest rule description accepted, in bytes.
const MaxDescription = 255

// ValidateRule checks one rule: a known protocol; ports 1-65535 with
// From <= To on tcp/udp and no ports on icmp/icmpv6/all; canonical CIDRs
// (no host bits); icmp sources IPv4 only and icmpv6 sources IPv6 only; valid
// cluster names; at least one source. Errors are *compute.FieldError.
func ValidateRule(r compute.RuleSpec) error {
	if !r.Protocol.Valid() {
		return compute.InvalidField("protocol", string(r.Protocol), "must be one of tcp, udp, icmp, icmpv6, all")
	}
	if err := validatePorts(r.Protocol, r.Ports); err != nil {
		return err
	}
	if len(r.SourceCIDRs) == 0 && len(r.SourceClusters) == 0 {
		// An allow rule always names who it lets in; "from anywhere" is
		// spelled 0.0.0.0/0 so that it is never an accident.
		return compute.InvalidField("sources", "", "at least one source CIDR or cluster is required")
	}
	for i, p := range r.SourceCIDRs {
		if err := validatePrefix(fmt.Sprintf("sourceCidrs[%d]", i), r.Protocol, p); err != nil {
			return err
		}
	}
	for i, c := range r.SourceClusters {
		if err := compute.ValidateName(fmt.Sprintf("sourceClusters[%d]", i), c); err != nil {
			return err
		}
	}
	return validateDescription(r.Description)
}

func validatePorts(proto compute.Protocol, pr compute.PortRange) error {
	if !proto.HasPorts() {
		if !pr.IsZero() {
			return compute.InvalidField("ports", pr.String(), fmt.Sprintf("%s rules take no ports", proto))
		}
		return nil
	}
	switch {
	case pr.IsZero():
		return compute.InvalidField("ports", "", fmt.Sprintf("%s rules need a port or a range (1-65535)", proto))
	case pr.From == 0:
		return compute.InvalidField("ports", pr.String(), "ports must be 1-65535")
	case pr.From > pr.To:
		return compute.InvalidField("ports", fmt.Sprintf("%d-%d", pr.From, pr.To), "the first port must not exceed the last")
	}
	return nil
}

func validatePrefix(field string, proto compute.Protocol, p netip.Prefix) error {
	if !p.IsValid() {
		return compute.InvalidField(field, p.String(), "not a valid CIDR")
	}
	a := p.Addr()
	if a.Is4In6() {
		// ::ffff:a.b.c.d/n never matches on the wire the way it reads:
		// packets carry the IPv4 address.
		return compute.InvalidField(field, p.String(), "IPv4-mapped IPv6 prefixes are not accepted; write the IPv4 prefix")
	}
	if a.Zone() != "" {
		return compute.InvalidField(field, p.String(), "zones are not accepted in prefixes")
	}
	if m := p.Masked(); m != p {
		// 10.0.0.1/8 is almost always a typo for 10.0.0.1/32; accepting it
		// as 10.0.0.0/8 would silently open far more than was meant.
		return compute.InvalidField(field, p.String(), fmt.Sprintf("host bits are set (did you mean %s or %s/%d?)", m, a, a.BitLen()))
	}
	switch {
	case proto == compute.ProtocolICMP && !a.Is4():
		return compute.InvalidField(field, p.String(), "icmp sources must be IPv4 (use icmpv6 for IPv6)")
	case proto == compute.ProtocolICMPv6 && !a.Is6():
		return compute.InvalidField(field, p.String(), "icmpv6 sources must be IPv6 (use icmp for IPv4)")
	}
	return nil
}

func validateDescription(d string) error {
	switch {
	case len(d) > MaxDescription:
		return compute.InvalidField("description", d[:32]+"...", fmt.Sprintf("must be at most %d bytes", MaxDescription))
	case !utf8.ValidString(d):
		return compute.InvalidField("description", "", "must be valid UTF-8")
	case strings.TrimSpace(d) != d:
		return compute.InvalidField("description", d, "must not begin or end with white space")
	}
	for _, r := range d {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) {
			return compute.InvalidField("description", d, "must not contain control characters")
		}
	}
	return nil
}

// ValidateRules checks each rule, naming the failing one as field[i].
func ValidateRules(field string, rules []compute.RuleSpec) error {
	for i, r := range rules {
		if err := ValidateRule(r); err != nil {
			return compute.PrefixField(fmt.Sprintf("%s[%d]", field, i), err)
		}
	}
	return nil
}

// ValidateInstanceSpec checks the whole spec, rules included.
func ValidateInstanceSpec(s compute.InstanceSpec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	return ValidateRules("rules", s.Rules)
}
