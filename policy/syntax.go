package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode"

	"github.com/compute-sdk/compute"
)

const syntaxHint = `want "PROTOCOL[:PORTS] from SOURCE[,SOURCE...] [# description]", e.g. "tcp:22 from 192.0.2.0/24"`

// clusterPrefix marks a cluster source in the rule syntax.
const clusterPrefix = "cluster:"

// Parse reads the human rule syntax:
//
//	tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32
//	udp:53 from cluster:train
//	icmp from 0.0.0.0/0
//	all from cluster:a,192.168.0.0/16
//
// An optional trailing `# description` sets the description.
//
// A bare address is a single host (/32 or /128). The result is canonical
// (Canonical) and valid (ValidateRule); errors are *compute.FieldError
// naming the part that is wrong: "rule", "protocol", "ports", "sources[i]"
// or "description".
func Parse(s string) (compute.RuleSpec, error) {
	var r compute.RuleSpec
	body, desc, hasDesc := strings.Cut(s, "#")
	if hasDesc {
		r.Description = strings.TrimSpace(desc)
	}
	body = strings.TrimSpace(body)
	if body == "" {
		return compute.RuleSpec{}, compute.InvalidField("rule", s, "empty rule; "+syntaxHint)
	}
	head, rest, ok := cutSpace(body)
	if !ok {
		return compute.RuleSpec{}, compute.InvalidField("rule", s, "no sources; "+syntaxHint)
	}
	kw, sources, ok := cutSpace(rest)
	if kw != "from" {
		return compute.RuleSpec{}, compute.InvalidField("rule", s, `expected "from" after the protocol; `+syntaxHint)
	}
	if !ok {
		return compute.RuleSpec{}, compute.InvalidField("rule", s, "no sources after \"from\"; an allow rule always names who (0.0.0.0/0 means anyone)")
	}

	proto, ports, hasPorts := strings.Cut(head, ":")
	r.Protocol = compute.Protocol(proto)
	if !r.Protocol.Valid() {
		return compute.RuleSpec{}, compute.InvalidField("protocol", proto, "must be one of tcp, udp, icmp, icmpv6, all")
	}
	switch {
	case hasPorts && !r.Protocol.HasPorts():
		return compute.RuleSpec{}, compute.InvalidField("ports", ports, fmt.Sprintf("%s rules take no ports", proto))
	case !hasPorts && r.Protocol.HasPorts():
		return compute.RuleSpec{}, compute.InvalidField("ports", "", fmt.Sprintf("%s rules need a port or a range, e.g. %s:22 or %s:8000-8080", proto, proto, proto))
	case hasPorts:
		pr, err := parsePorts(ports)
		if err != nil {
			return compute.RuleSpec{}, err
		}
		r.Ports = pr
	}

	for i, tok := range strings.Split(sources, ",") {
		field := fmt.Sprintf("sources[%d]", i)
		tok = strings.TrimSpace(tok)
		switch {
		case tok == "":
			return compute.RuleSpec{}, compute.InvalidField(field, "", "empty source (stray comma?)")
		case strings.IndexFunc(tok, unicode.IsSpace) >= 0:
			return compute.RuleSpec{}, compute.InvalidField(field, tok, "sources are separated by commas")
		case strings.HasPrefix(tok, clusterPrefix):
			name := strings.TrimPrefix(tok, clusterPrefix)
			if err := compute.ValidateName(field, name); err != nil {
				return compute.RuleSpec{}, err
			}
			r.SourceClusters = append(r.SourceClusters, name)
		default:
			p, err := parseSource(tok)
			if err != nil {
				return compute.RuleSpec{}, compute.InvalidField(field, tok, err.Error())
			}
			if err := validatePrefix(field, r.Protocol, p); err != nil {
				return compute.RuleSpec{}, err
			}
			r.SourceCIDRs = append(r.SourceCIDRs, p)
		}
	}
	r = Canonical(r)
	if err := ValidateRule(r); err != nil {
		return compute.RuleSpec{}, err
	}
	return r, nil
}

// cutSpace splits s at its first run of white space.
func cutSpace(s string) (before, after string, found bool) {
	i := strings.IndexFunc(s, unicode.IsSpace)
	if i < 0 {
		return s, "", false
	}
	after = strings.TrimSpace(s[i:])
	return s[:i], after, after != ""
}

func parsePorts(s string) (compute.PortRange, error) {
	from, to, isRange := strings.Cut(s, "-")
	f, err := parsePort(from)
	if err != nil {
		return compute.PortRange{}, compute.InvalidField("ports", s, err.Error())
	}
	t := f
	if isRange {
		if t, err = parsePort(to); err != nil {
			return compute.PortRange{}, compute.InvalidField("ports", s, err.Error())
		}
	}
	if f == 0 || t == 0 {
		return compute.PortRange{}, compute.InvalidField("ports", s, "ports must be 1-65535")
	}
	pr := compute.Ports(f, t)
	if err := validatePorts(compute.ProtocolTCP, pr); err != nil {
		return compute.PortRange{}, compute.InvalidField("ports", s, err.(*compute.FieldError).Reason)
	}
	return pr, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("missing port number")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a port number", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", s)
	}
	return uint16(n), nil
}

// parseSource reads a CIDR or a bare address (a single host).
func parseSource(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a CIDR (%v)", trimNetipErr(err))
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address, a CIDR or cluster:NAME (%v)", trimNetipErr(err))
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("zones are not accepted in sources")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// trimNetipErr drops the package's own prefix from its error text, which
// repeats the input the caller already shows.
func trimNetipErr(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "): "); i >= 0 {
		return msg[i+3:]
	}
	if i := strings.Index(msg, ": "); i >= 0 {
		return msg[i+2:]
	}
	return msg
}

// Format writes r in the syntax Parse reads; Parse(Format(r)) equals
// Canonical(r).
func Format(r compute.RuleSpec) string {
	r = Canonical(r)
	var b strings.Builder
	b.WriteString(string(r.Protocol))
	if r.Protocol.HasPorts() || !r.Ports.IsZero() {
		b.WriteByte(':')
		b.WriteString(r.Ports.String())
	}
	b.WriteString(" from ")
	n := 0
	for _, p := range r.SourceCIDRs {
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		if p.IsValid() && p.IsSingleIP() {
			b.WriteString(p.Addr().String())
		} else {
			b.WriteString(p.String())
		}
	}
	for _, c := range r.SourceClusters {
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		b.WriteString(clusterPrefix)
		b.WriteString(c)
	}
	if r.Description != "" {
		b.WriteString(" # ")
		b.WriteString(r.Description)
	}
	return b.String()
}
