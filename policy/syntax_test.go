package policy_test

import (
	"reflect"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in     string
		want   compute.RuleSpec
		format string // "" means in
	}{
		{"tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32",
			compute.RuleSpec{Protocol: "tcp", Ports: compute.Ports(8080, 8090), SourceCIDRs: pfxs("10.0.0.0/8", "2001:db8::/32")}, ""},
		{"tcp:22 from 192.0.2.7",
			compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.7/32")}, ""},
		{"tcp:22 from 2001:db8::1",
			compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("2001:db8::1/128")}, ""},
		{"udp:53 from cluster:train",
			compute.RuleSpec{Protocol: "udp", Ports: compute.Port(53), SourceClusters: []string{"train"}}, ""},
		{"icmp from 0.0.0.0/0",
			compute.RuleSpec{Protocol: "icmp", SourceCIDRs: pfxs("0.0.0.0/0")}, ""},
		{"icmpv6 from ::/0",
			compute.RuleSpec{Protocol: "icmpv6", SourceCIDRs: pfxs("::/0")}, ""},
		{"all from cluster:a",
			compute.RuleSpec{Protocol: "all", SourceClusters: []string{"a"}}, ""},
		{"all from cluster:a,192.168.0.0/16",
			compute.RuleSpec{Protocol: "all", SourceCIDRs: pfxs("192.168.0.0/16"), SourceClusters: []string{"a"}},
			"all from 192.168.0.0/16,cluster:a"},
		{"tcp:22 from 192.0.2.7 # ssh from the office",
			compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.7/32"), Description: "ssh from the office"}, ""},
		{"  tcp:80-80   from\t10.0.0.0/9 , 10.128.0.0/9,cluster:b,cluster:a,cluster:b   #  web # v2  ",
			compute.RuleSpec{Protocol: "tcp", Ports: compute.Port(80), SourceCIDRs: pfxs("10.0.0.0/8"), SourceClusters: []string{"a", "b"}, Description: "web # v2"},
			"tcp:80 from 10.0.0.0/8,cluster:a,cluster:b # web # v2"},
		{"tcp:1-65535 from 0.0.0.0/0,::/0 #",
			compute.RuleSpec{Protocol: "tcp", Ports: compute.Ports(1, 65535), SourceCIDRs: pfxs("0.0.0.0/0", "::/0")},
			"tcp:1-65535 from 0.0.0.0/0,::/0"},
		{"udp:022 from 192.0.2.0/24",
			compute.RuleSpec{Protocol: "udp", Ports: compute.Port(22), SourceCIDRs: pfxs("192.0.2.0/24")},
			"udp:22 from 192.0.2.0/24"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := policy.Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Parse = %+v, want %+v", got, tc.want)
			}
			want := tc.format
			if want == "" {
				want = tc.in
			}
			if s := policy.Format(got); s != want {
				t.Errorf("Format = %q, want %q", s, want)
			}
			again, err := policy.Parse(policy.Format(got))
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("Parse(Format(r)) = %+v, %v; want %+v", again, err, got)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ in, field string }{
		{"", "rule"},
		{"   ", "rule"},
		{"# only a comment", "rule"},
		{"tcp:22", "rule"},
		{"tcp:22 from", "rule"},
		{"tcp:22 from   # x", "rule"},
		{"tcp:22 to 10.0.0.0/8", "rule"},
		{"tcp:22 10.0.0.0/8", "rule"},
		{"sctp:22 from 10.0.0.0/8", "protocol"},
		{"TCP:22 from 10.0.0.0/8", "protocol"},
		{":22 from 10.0.0.0/8", "protocol"},
		{"tcp from 10.0.0.0/8", "ports"},
		{"tcp: from 10.0.0.0/8", "ports"},
		{"tcp:0 from 10.0.0.0/8", "ports"},
		{"tcp:0-10 from 10.0.0.0/8", "ports"},
		{"tcp:90-80 from 10.0.0.0/8", "ports"},
		{"tcp:65536 from 10.0.0.0/8", "ports"},
		{"tcp:-1 from 10.0.0.0/8", "ports"},
		{"tcp:+1 from 10.0.0.0/8", "ports"},
		{"tcp:1-2-3 from 10.0.0.0/8", "ports"},
		{"tcp:ssh from 10.0.0.0/8", "ports"},
		{"icmp:8 from 0.0.0.0/0", "ports"},
		{"all:1-2 from cluster:a", "ports"},
		{"tcp:22 from 10.0.0.1/33", "sources[0]"},
		{"tcp:22 from ::/129", "sources[0]"},
		{"tcp:22 from 10.0.0.1/8", "sources[0]"},
		{"tcp:22 from 10.0.0.0/8,2001:db8::1/32", "sources[1]"},
		{"tcp:22 from 10.0.0.0/8,", "sources[1]"},
		{"tcp:22 from ,10.0.0.0/8", "sources[0]"},
		{"tcp:22 from 10.0.0.0/8 10.1.0.0/16", "sources[0]"},
		{"tcp:22 from example.com", "sources[0]"},
		{"tcp:22 from 010.0.0.1", "sources[0]"},
		{"tcp:22 from fe80::1%eth0", "sources[0]"},
		{"tcp:22 from ::ffff:10.0.0.1", "sources[0]"},
		{"tcp:22 from cluster:", "sources[0]"},
		{"tcp:22 from cluster:Train", "sources[0]"},
		{"icmp from ::/0", "sources[0]"},
		{"icmpv6 from 10.0.0.0/8", "sources[0]"},
		{"tcp:22 from 10.0.0.0/8 # bell\a", "description"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			r, err := policy.Parse(tc.in)
			wantField(t, err, tc.field)
			if !reflect.DeepEqual(r, compute.RuleSpec{}) {
				t.Errorf("Parse returned %+v with its error, want the zero rule", r)
			}
		})
	}
}
