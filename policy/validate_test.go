package policy_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func pfxs(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, pfx(s))
	}
	return out
}

// wantField checks that err is a *compute.FieldError wrapping
// ErrInvalidArgument and naming field.
func wantField(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one naming %q", field)
	}
	if !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("error %q does not wrap ErrInvalidArgument", err)
	}
	var fe *compute.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %q is %T, not a *compute.FieldError", err, err)
	}
	if fe.Field != field {
		t.Errorf("error %q names field %q, want %q", err, fe.Field, field)
	}
	if !strings.Contains(err.Error(), field) {
		t.Errorf("error message %q does not name %q", err, field)
	}
}

func TestValidateRule(t *testing.T) {
	tcp22 := func(mod func(*compute.RuleSpec)) compute.RuleSpec {
		r := compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.0/24")}
		mod(&r)
		return r
	}
	ok := []struct {
		name string
		rule compute.RuleSpec
	}{
		{"tcp single port", tcp22(func(*compute.RuleSpec) {})},
		{"tcp full range", tcp22(func(r *compute.RuleSpec) { r.Ports = compute.Ports(1, 65535) })},
		{"udp range", tcp22(func(r *compute.RuleSpec) { r.Protocol, r.Ports = compute.ProtocolUDP, compute.Ports(53, 54) })},
		{"mixed families", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = pfxs("10.0.0.0/8", "2001:db8::/32") })},
		{"anyone v4 and v6", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = pfxs("0.0.0.0/0", "::/0") })},
		{"host", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = pfxs("192.0.2.7/32", "2001:db8::1/128") })},
		{"cluster only", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs, r.SourceClusters = nil, []string{"train"} })},
		{"icmp v4", compute.RuleSpec{Protocol: compute.ProtocolICMP, SourceCIDRs: pfxs("0.0.0.0/0")}},
		{"icmpv6 v6", compute.RuleSpec{Protocol: compute.ProtocolICMPv6, SourceCIDRs: pfxs("::/0")}},
		{"icmp from cluster", compute.RuleSpec{Protocol: compute.ProtocolICMP, SourceClusters: []string{"a"}}},
		{"all", compute.RuleSpec{Protocol: compute.ProtocolAll, SourceCIDRs: pfxs("10.0.0.0/8", "fd00::/8"), SourceClusters: []string{"a"}}},
		{"description", tcp22(func(r *compute.RuleSpec) { r.Description = "ssh from the office — ünïcode" })},
		{"max description", tcp22(func(r *compute.RuleSpec) { r.Description = strings.Repeat("x", 255) })},
	}
	for _, tc := range ok {
		t.Run("ok/"+tc.name, func(t *testing.T) {
			if err := policy.ValidateRule(tc.rule); err != nil {
				t.Fatalf("ValidateRule: %v", err)
			}
		})
	}

	bad := []struct {
		name  string
		rule  compute.RuleSpec
		field string
	}{
		{"unknown protocol", tcp22(func(r *compute.RuleSpec) { r.Protocol = "sctp" }), "protocol"},
		{"empty protocol", tcp22(func(r *compute.RuleSpec) { r.Protocol = "" }), "protocol"},
		{"upper-case protocol", tcp22(func(r *compute.RuleSpec) { r.Protocol = "TCP" }), "protocol"},
		{"port 0", tcp22(func(r *compute.RuleSpec) { r.Ports = compute.Port(0) }), "ports"},
		{"from 0", tcp22(func(r *compute.RuleSpec) { r.Ports = compute.Ports(0, 10) }), "ports"},
		{"from > to", tcp22(func(r *compute.RuleSpec) { r.Ports = compute.Ports(90, 80) }), "ports"},
		{"to 0", tcp22(func(r *compute.RuleSpec) { r.Ports = compute.Ports(80, 0) }), "ports"},
		{"udp without ports", tcp22(func(r *compute.RuleSpec) { r.Protocol, r.Ports = compute.ProtocolUDP, compute.PortRange{} }), "ports"},
		{"ports on icmp", compute.RuleSpec{Protocol: compute.ProtocolICMP, Ports: compute.Port(8), SourceCIDRs: pfxs("0.0.0.0/0")}, "ports"},
		{"ports on icmpv6", compute.RuleSpec{Protocol: compute.ProtocolICMPv6, Ports: compute.Ports(1, 2), SourceCIDRs: pfxs("::/0")}, "ports"},
		{"ports on all", compute.RuleSpec{Protocol: compute.ProtocolAll, Ports: compute.Port(22), SourceClusters: []string{"a"}}, "ports"},
		{"no sources", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = nil }), "sources"},
		{"empty source lists", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs, r.SourceClusters = []netip.Prefix{}, []string{} }), "sources"},
		{"host bits set", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = pfxs("10.0.0.1/8") }), "sourceCidrs[0]"},
		{"host bits set v6", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = pfxs("10.0.0.0/8", "2001:db8::1/32") }), "sourceCidrs[1]"},
		{"zero prefix", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = []netip.Prefix{{}} }), "sourceCidrs[0]"},
		{"bits out of range", tcp22(func(r *compute.RuleSpec) {
			r.SourceCIDRs = []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 33)}
		}), "sourceCidrs[0]"},
		{"v6 bits out of range", tcp22(func(r *compute.RuleSpec) {
			r.SourceCIDRs = []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 129)}
		}), "sourceCidrs[0]"},
		{"ipv4-mapped", tcp22(func(r *compute.RuleSpec) { r.SourceCIDRs = pfxs("::ffff:10.0.0.0/104") }), "sourceCidrs[0]"},
		{"zone", tcp22(func(r *compute.RuleSpec) {
			r.SourceCIDRs = []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("fe80::1%eth0"), 128)}
		}), ""},
		{"icmp from v6", compute.RuleSpec{Protocol: compute.ProtocolICMP, SourceCIDRs: pfxs("10.0.0.0/8", "::/0")}, "sourceCidrs[1]"},
		{"icmpv6 from v4", compute.RuleSpec{Protocol: compute.ProtocolICMPv6, SourceCIDRs: pfxs("0.0.0.0/0")}, "sourceCidrs[0]"},
		{"empty cluster", tcp22(func(r *compute.RuleSpec) { r.SourceClusters = []string{""} }), "sourceClusters[0]"},
		{"bad cluster", tcp22(func(r *compute.RuleSpec) { r.SourceClusters = []string{"ok", "Bad_Name"} }), "sourceClusters[1]"},
		{"long description", tcp22(func(r *compute.RuleSpec) { r.Description = strings.Repeat("x", 256) }), "description"},
		{"control in description", tcp22(func(r *compute.RuleSpec) { r.Description = "a\nb" }), "description"},
		{"C1 control in description", tcp22(func(r *compute.RuleSpec) { r.Description = "a\u0085b" }), "description"},
		{"padded description", tcp22(func(r *compute.RuleSpec) { r.Description = " ssh" }), "description"},
		{"non-UTF-8 description", tcp22(func(r *compute.RuleSpec) { r.Description = "a\xffb" }), "description"},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.name, func(t *testing.T) {
			err := policy.ValidateRule(tc.rule)
			if tc.field == "" {
				// PrefixFrom drops zones, so the prefix is valid: what
				// matters is that nothing panics and the result is sane.
				if err != nil {
					wantField(t, err, "sourceCidrs[0]")
				}
				return
			}
			wantField(t, err, tc.field)
		})
	}
}

func TestValidateRulesPrefixesIndex(t *testing.T) {
	rules := []compute.RuleSpec{
		{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.0/24")},
		{Protocol: compute.ProtocolTCP, Ports: compute.Port(0), SourceCIDRs: pfxs("192.0.2.0/24")},
	}
	wantField(t, policy.ValidateRules("rules", rules), "rules[1].ports")
	if err := policy.ValidateRules("rules", rules[:1]); err != nil {
		t.Fatal(err)
	}
	if err := policy.ValidateRules("rules", nil); err != nil {
		t.Fatal(err)
	}
}

func TestValidateInstanceSpec(t *testing.T) {
	good := compute.InstanceSpec{
		Name:    "web-1",
		SSHKeys: []string{testKey},
		Rules:   []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.7/32")}},
	}
	if err := policy.ValidateInstanceSpec(good); err != nil {
		t.Fatalf("ValidateInstanceSpec(good): %v", err)
	}
	cases := []struct {
		name  string
		mod   func(*compute.InstanceSpec)
		field string
	}{
		{"empty name", func(s *compute.InstanceSpec) { s.Name = "" }, "name"},
		{"no keys", func(s *compute.InstanceSpec) { s.SSHKeys = nil }, "sshKeys"},
		{"empty key list", func(s *compute.InstanceSpec) { s.SSHKeys = []string{} }, "sshKeys"},
		{"bad key", func(s *compute.InstanceSpec) { s.SSHKeys = []string{testKey, "ssh-ed25519 AAAA"} }, "sshKeys[1]"},
		{"bad rule port", func(s *compute.InstanceSpec) { s.Rules[0].Ports = compute.Ports(10, 9) }, "rules[0].ports"},
		{"bad rule cidr", func(s *compute.InstanceSpec) {
			s.Rules = append(s.Rules, compute.RuleSpec{Protocol: compute.ProtocolUDP, Ports: compute.Port(53), SourceCIDRs: pfxs("10.0.0.0/8", "10.0.0.1/8")})
		}, "rules[1].sourceCidrs[1]"},
		{"rule without source", func(s *compute.InstanceSpec) { s.Rules[0].SourceCIDRs = nil }, "rules[0].sources"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			s.Rules = append([]compute.RuleSpec(nil), good.Rules...)
			s.Rules[0].SourceCIDRs = append([]netip.Prefix(nil), good.Rules[0].SourceCIDRs...)
			tc.mod(&s)
			wantField(t, policy.ValidateInstanceSpec(s), tc.field)
		})
	}
}

// testKey is a fixed, valid ed25519 public key.
const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDuXHMOuHXJLT/ws9L5r/Ed9j7Hn9c8V7C8cX+Ug3N2T test@example"
