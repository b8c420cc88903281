package aws

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

func TestCreateInstanceWire(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()

	cl, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "train", Labels: map[string]string{"team": "ml"}})
	if err != nil {
		t.Fatalf("CreateCluster: %v", err)
	}
	key1, key2 := testKey(t), testKey(t)
	spec := compute.InstanceSpec{
		Name:    "web-1",
		RefID:   "ref-web-1",
		Cluster: "train",
		SSHKeys: []string{key1, key2},
		Rules: []compute.RuleSpec{
			{Protocol: compute.ProtocolTCP, Ports: compute.Ports(8080, 8090), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}, Description: "app"},
		},
		Labels: map[string]string{"env": "test"},
	}
	inst, err := p.CreateInstance(ctx, spec)
	if err != nil {
		t.Fatalf("CreateInstance: %v", err)
	}

	runs := f.callsOf("RunInstances")
	if len(runs) != 1 {
		t.Fatalf("RunInstances calls = %d, want 1", len(runs))
	}
	q := runs[0].Params
	sum := sha256.Sum256([]byte("test-owner\x00ref-web-1"))
	isg := f.groupByName("compute-i-" + hex.EncodeToString(sum[:])[:20])
	if isg == nil {
		t.Fatal("no instance security group")
	}
	for k, want := range map[string]string{
		"ImageId":                            "ami-0debian12",
		"InstanceType":                       "t3.micro",
		"MinCount":                           "1",
		"MaxCount":                           "1",
		"ClientToken":                        hex.EncodeToString(sum[:]),
		"SubnetId":                           "subnet-0a1b2c3d",
		"SecurityGroupId.1":                  isg.ID,
		"SecurityGroupId.2":                  cl.ID,
		"BlockDeviceMapping.1.DeviceName":    "/dev/xvda",
		"BlockDeviceMapping.1.Ebs.Encrypted": "true",
		"BlockDeviceMapping.1.Ebs.KmsKeyId":  p.cfg.KMSKeyID,
		"BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
		"BlockDeviceMapping.2.DeviceName":              "/dev/sdb",
		"BlockDeviceMapping.2.NoDevice":                "",
		"MetadataOptions.HttpTokens":                   "required",
		"MetadataOptions.HttpEndpoint":                 "enabled",
		"MetadataOptions.HttpPutResponseHopLimit":      "1",
		"TagSpecification.1.ResourceType":              "instance",
		"TagSpecification.2.ResourceType":              "volume",
	} {
		if got, ok := q[k]; !ok || got[0] != want {
			t.Errorf("RunInstances %s = %q, want %q", k, got, want)
		}
	}
	if q.Has("SecurityGroupId.3") || q.Has("BlockDeviceMapping.3.DeviceName") || q.Has("KeyName") {
		t.Errorf("RunInstances has extra parameters: %v", q)
	}
	itags := tagPairs(q, "TagSpecification.1.Tag")
	for k, want := range map[string]string{
		"compute:owner": "test-owner", "compute:name": "web-1", "compute:ref-id": "ref-web-1",
		"compute:cluster": "train", "compute:label:env": "test",
	} {
		if itags[k] != want {
			t.Errorf("instance tag %s = %q, want %q (all: %v)", k, itags[k], want, itags)
		}
	}
	vtags := tagPairs(q, "TagSpecification.2.Tag")
	if vtags["compute:owner"] != "test-owner" || vtags["compute:ref-id"] != "ref-web-1" {
		t.Errorf("volume tags = %v", vtags)
	}

	ud, err := base64.StdEncoding.DecodeString(q.Get("UserData"))
	if err != nil {
		t.Fatalf("UserData is not base64: %v", err)
	}
	for _, want := range []string{
		"#cloud-config", key1, key2, "path: /root/.ssh/authorized_keys", "name: admin",
		"ssh_pwauth: false", "disable_root: false",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
		"KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org",
		"Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com",
		"MACs hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com",
		"HostKeyAlgorithms ssh-ed25519,",
	} {
		if !strings.Contains(string(ud), want) {
			t.Errorf("user data lacks %q:\n%s", want, ud)
		}
	}
	for _, bad := range []string{"ssh-rsa,", ",ssh-rsa\n", "cbc", "hmac-sha1", "diffie-hellman-group14-sha1", "PasswordAuthentication yes"} {
		if strings.Contains(string(ud), bad) {
			t.Errorf("user data contains %q", bad)
		}
	}
	if strings.Count(string(ud), key1) != 2 || strings.Count(string(ud), key2) != 2 {
		t.Errorf("each key should be written for admin and root:\n%s", ud)
	}

	// The instance's own group has exactly the rule's native rules; the
	// cluster group only its self rule; nothing opens port 22.
	want := map[string][]string{isg.ID: {"tcp|8080|8090|10.0.0.0/8", "tcp|8080|8090|2001:db8::/32"}}
	if v := f.audit(want); len(v) > 0 {
		t.Errorf("audit: %v", v)
	}
	if got := f.ingress(cl.ID); !slices.Equal(got, []string{"-1|-1|-1|sg:" + cl.ID}) {
		t.Errorf("cluster group ingress = %v, want only the self rule", got)
	}

	if inst.Status != compute.StatusPending || inst.Name != "web-1" || inst.RefID != "ref-web-1" || inst.Cluster != "train" {
		t.Errorf("instance = %+v", inst)
	}
	rules, err := p.ListRules(ctx, compute.InstanceTarget(inst.ID))
	if err != nil {
		t.Fatalf("ListRules: %v", err)
	}
	wantRules, _ := policy.NewRules(compute.InstanceTarget(inst.ID), spec.Rules)
	if !slices.EqualFunc(rules, wantRules, sameRule) {
		t.Errorf("ListRules = %+v, want %+v", rules, wantRules)
	}
	if f.groupByName(isg.Name).Tags[tagInstanceID] != inst.ID {
		t.Errorf("instance group not tagged with the instance ID: %v", isg.Tags)
	}

	// Same RefID: the same instance, no second launch.
	again, err := p.CreateInstance(ctx, spec)
	if err != nil {
		t.Fatalf("second CreateInstance: %v", err)
	}
	if again.ID != inst.ID {
		t.Errorf("second create returned %s, want %s", again.ID, inst.ID)
	}
	if n := len(f.callsOf("RunInstances")); n != 1 {
		t.Errorf("RunInstances calls after a repeated create = %d, want 1", n)
	}

	got, err := p.GetInstance(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != compute.StatusRunning || got.SSH.Host != "203.0.113.7" || got.SSH.User != "admin" || len(got.Addresses) != 2 {
		t.Errorf("GetInstance = %+v", got)
	}
	list, err := p.ListInstances(ctx, compute.ListOptions{Cluster: "train"})
	if err != nil || len(list) != 1 || list[0].ID != inst.ID {
		t.Errorf("ListInstances = %v, %v", list, err)
	}
}

func sameRule(a, b compute.FirewallRule) bool {
	return a.ID == b.ID && a.Target == b.Target && policy.Format(a.RuleSpec) == policy.Format(b.RuleSpec)
}

func TestCreateInstanceNoRulesOpensNothing(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	inst, err := p.CreateInstance(t.Context(), compute.InstanceSpec{Name: "lone", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	if v := f.audit(nil); len(v) > 0 {
		t.Errorf("audit: %v", v)
	}
	q := f.callsOf("RunInstances")[0].Params
	if q.Has("SecurityGroupId.2") {
		t.Errorf("an instance without a cluster should get only its own group: %v", list(q, "SecurityGroupId"))
	}
	rules, err := p.ListRules(t.Context(), compute.InstanceTarget(inst.ID))
	if err != nil || len(rules) != 0 {
		t.Errorf("ListRules = %v, %v; want none", rules, err)
	}
}

func TestCreateInstanceRefusals(t *testing.T) {
	tests := []struct {
		name  string
		cfg   func(*Config)
		spec  func(*compute.InstanceSpec)
		want  error
		field string
	}{
		{name: "no image", cfg: func(c *Config) { c.ImageID = "" }, want: compute.ErrInvalidArgument, field: "image"},
		{name: "instance-store root", spec: func(s *compute.InstanceSpec) { s.Image = "ami-0instancestore" }, want: compute.ErrUnsupported},
		{name: "unknown image", spec: func(s *compute.InstanceSpec) { s.Image = "ami-0nothere" }, want: compute.ErrNotFound},
		{name: "unknown cluster", spec: func(s *compute.InstanceSpec) { s.Cluster = "nope" }, want: compute.ErrNotFound},
		{name: "unknown source cluster", spec: func(s *compute.InstanceSpec) {
			s.Rules = []compute.RuleSpec{{Protocol: compute.ProtocolUDP, Ports: compute.Port(53), SourceClusters: []string{"nope"}}}
		}, want: compute.ErrNotFound},
		{name: "bad key", spec: func(s *compute.InstanceSpec) { s.SSHKeys = []string{"ssh-dss AAAA"} }, want: compute.ErrInvalidArgument, field: "sshKeys"},
		{name: "too many rules", spec: func(s *compute.InstanceSpec) {
			for i := range 61 {
				s.Rules = append(s.Rules, compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(uint16(1000 + 2*i)), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
			}
		}, want: compute.ErrQuota},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEC2(t)
			var mods []func(*Config)
			if tt.cfg != nil {
				mods = append(mods, tt.cfg)
			}
			p := newTestProvider(t, f, mods...)
			spec := compute.InstanceSpec{Name: "x", SSHKeys: []string{testKey(t)}}
			if tt.spec != nil {
				tt.spec(&spec)
			}
			_, err := p.CreateInstance(t.Context(), spec)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var fe *compute.FieldError
			if tt.field != "" && (!errors.As(err, &fe) || !strings.HasPrefix(fe.Field, tt.field)) {
				t.Errorf("err = %v, want a field error naming %q", err, tt.field)
			}
			if n := len(f.callsOf("RunInstances")); n != 0 {
				t.Errorf("RunInstances was called %d times", n)
			}
			if n := len(f.callsOf("CreateSecurityGroup")) - len(f.callsOf("DeleteSecurityGroup")); n != 0 {
				t.Errorf("%d security groups left behind", n)
			}
		})
	}
}
