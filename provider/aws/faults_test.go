package aws

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/compute-sdk/compute"
)

// TestAuditCatchesInjectedFaults shows that the wire tests' checker is
// not vacuous: a broken translation that opens port 22, attaches the
// default group, or leaves a volume unencrypted (injected after the
// provider built each request) makes the audit fail, and the audit is
// clean without the fault.
func TestAuditCatchesInjectedFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault func(action string, q url.Values)
		want  string // substring of a violation; "" = no violation
	}{
		{name: "no fault", fault: func(string, url.Values) {}},
		{name: "opens port 22", want: "opens port 22", fault: func(action string, q url.Values) {
			if action != "AuthorizeSecurityGroupIngress" {
				return
			}
			n := 1
			for q.Has("IpPermissions." + strconv.Itoa(n) + ".IpProtocol") {
				n++
			}
			p := "IpPermissions." + strconv.Itoa(n)
			q.Set(p+".IpProtocol", "tcp")
			q.Set(p+".FromPort", "22")
			q.Set(p+".ToPort", "22")
			q.Set(p+".IpRanges.1.CidrIp", "0.0.0.0/0")
		}},
		{name: "widens a rule to port 22", want: "opens port 22", fault: widenOnce()},
		{name: "attaches the default group", want: "default group", fault: func(action string, q url.Values) {
			if action == "RunInstances" {
				q.Set("SecurityGroupId.3", fakeDefaultGroup)
			}
		}},
		{name: "drops every group", want: "without SecurityGroupId", fault: func(action string, q url.Values) {
			if action == "RunInstances" {
				for k := range q {
					if strings.HasPrefix(k, "SecurityGroupId.") {
						q.Del(k)
					}
				}
			}
		}},
		{name: "unencrypted root volume", want: "unencrypted", fault: func(action string, q url.Values) {
			if action == "RunInstances" {
				q.Set("BlockDeviceMapping.1.Ebs.Encrypted", "false")
			}
		}},
		{name: "no block device mapping", want: "no block device mapping", fault: func(action string, q url.Values) {
			if action == "RunInstances" {
				for k := range q {
					if strings.HasPrefix(k, "BlockDeviceMapping.") {
						q.Del(k)
					}
				}
			}
		}},
		{name: "IMDSv1 allowed", want: "IMDSv1", fault: func(action string, q url.Values) {
			if action == "RunInstances" {
				q.Set("MetadataOptions.HttpTokens", "optional")
			}
		}},
		{name: "cluster self rule widened to everyone", want: "unexpected ingress -1|-1|-1|0.0.0.0/0", fault: func(action string, q url.Values) {
			if action == "AuthorizeSecurityGroupIngress" && q.Has("IpPermissions.1.Groups.1.GroupId") && q.Get("IpPermissions.1.IpProtocol") == "-1" {
				q.Del("IpPermissions.1.Groups.1.GroupId")
				q.Del("IpPermissions.1.Groups.1.Description")
				q.Set("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeEC2(t)
			p := newTestProvider(t, f, withRewrite(tt.fault))
			ctx := t.Context()
			if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"}); err != nil {
				t.Fatal(err)
			}
			_, err := p.CreateInstance(ctx, compute.InstanceSpec{
				Name: "a", Cluster: "c", SSHKeys: []string{testKey(t)},
				Rules: []compute.RuleSpec{mustParse(t, "tcp:8080 from 10.0.0.0/8")},
			})
			if err != nil {
				t.Fatal(err)
			}
			// A later rule change goes through the same translation.
			inst, err := p.ListInstances(ctx, compute.ListOptions{})
			if err != nil || len(inst) != 1 {
				t.Fatalf("ListInstances = %v, %v", inst, err)
			}
			if _, err := p.SetRules(ctx, compute.InstanceTarget(inst[0].ID), []compute.RuleSpec{
				mustParse(t, "tcp:8080 from 10.0.0.0/8"), mustParse(t, "tcp:9090 from 10.0.0.0/8"),
			}); err != nil {
				t.Fatal(err)
			}
			isg := f.groupByName(instanceGroupName("test-owner", "a"))
			v := f.audit(map[string][]string{isg.ID: {"tcp|8080|8080|10.0.0.0/8", "tcp|9090|9090|10.0.0.0/8"}})
			if tt.want == "" {
				if len(v) != 0 {
					t.Fatalf("audit without a fault: %v", v)
				}
				return
			}
			found := false
			for _, s := range v {
				found = found || strings.Contains(s, tt.want)
			}
			if !found {
				t.Errorf("audit = %v, want a violation containing %q", v, tt.want)
			}
		})
	}
}

// TestNeverAttachesDefaultGroup: even when the VPC's default group carries
// compute's cluster tags (a mistake or an attack), CreateInstance refuses
// to attach it and launches nothing.
func TestNeverAttachesDefaultGroup(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	f.mu.Lock()
	f.groups[fakeDefaultGroup].Tags = map[string]string{tagOwner: "test-owner", tagKind: kindCluster, tagCluster: "evil"}
	f.mu.Unlock()
	_, err := p.CreateInstance(t.Context(), compute.InstanceSpec{Name: "a", Cluster: "evil", SSHKeys: []string{testKey(t)}})
	if !errors.Is(err, compute.ErrPrecondition) {
		t.Fatalf("err = %v, want ErrPrecondition", err)
	}
	if n := len(f.callsOf("RunInstances")); n != 0 {
		t.Errorf("RunInstances sent %d times", n)
	}
	if g := f.groupByName(instanceGroupName("test-owner", "a")); g != nil {
		t.Errorf("refused create left group %s", g.ID)
	}
}

// TestCheckRunRefuses feeds the last check before RunInstances requests a
// broken translation could build.
func TestCheckRunRefuses(t *testing.T) {
	own := group{ID: "sg-own", Name: "compute-i-x", Tags: map[string]string{tagKind: kindInstance}}
	def := group{ID: "sg-def", Name: "default", Tags: map[string]string{tagKind: kindCluster}}
	valid := func() *ec2.RunInstancesInput {
		return &ec2.RunInstancesInput{
			SecurityGroupIds: []string{"sg-own"},
			BlockDeviceMappings: []types.BlockDeviceMapping{
				{DeviceName: awssdk.String("/dev/xvda"), Ebs: &types.EbsBlockDevice{Encrypted: awssdk.Bool(true)}},
				{DeviceName: awssdk.String("/dev/sdb"), NoDevice: awssdk.String("")},
			},
			MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired, HttpPutResponseHopLimit: awssdk.Int32(2)},
		}
	}
	if err := checkRun(valid(), []group{own}); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*ec2.RunInstancesInput)
		want   error
	}{
		{"unencrypted ebs", func(in *ec2.RunInstancesInput) { in.BlockDeviceMappings[0].Ebs.Encrypted = awssdk.Bool(false) }, compute.ErrUnsupported},
		{"encryption unset", func(in *ec2.RunInstancesInput) { in.BlockDeviceMappings[0].Ebs.Encrypted = nil }, compute.ErrInvalidArgument},
		{"no mappings", func(in *ec2.RunInstancesInput) { in.BlockDeviceMappings = nil }, compute.ErrInvalidArgument},
		{"instance store", func(in *ec2.RunInstancesInput) {
			in.BlockDeviceMappings[1] = types.BlockDeviceMapping{DeviceName: awssdk.String("/dev/sdb"), VirtualName: awssdk.String("ephemeral0")}
		}, compute.ErrInvalidArgument},
		{"imdsv1", func(in *ec2.RunInstancesInput) { in.MetadataOptions.HttpTokens = types.HttpTokensStateOptional }, compute.ErrInvalidArgument},
		{"hop limit 3", func(in *ec2.RunInstancesInput) { in.MetadataOptions.HttpPutResponseHopLimit = awssdk.Int32(3) }, compute.ErrInvalidArgument},
		{"no groups", func(in *ec2.RunInstancesInput) { in.SecurityGroupIds = nil }, compute.ErrInvalidArgument},
		{"default group", func(in *ec2.RunInstancesInput) { in.SecurityGroupIds = append(in.SecurityGroupIds, "sg-def") }, compute.ErrPrecondition},
		{"unknown group", func(in *ec2.RunInstancesInput) { in.SecurityGroupIds = append(in.SecurityGroupIds, "sg-other") }, compute.ErrInvalidArgument},
		{"group by name", func(in *ec2.RunInstancesInput) { in.SecurityGroups = []string{"default"} }, compute.ErrInvalidArgument},
		{"interfaces", func(in *ec2.RunInstancesInput) {
			in.NetworkInterfaces = []types.InstanceNetworkInterfaceSpecification{{DeviceIndex: awssdk.Int32(0)}}
		}, compute.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := valid()
			tt.mutate(in)
			if err := checkRun(in, []group{own, def}); !errors.Is(err, tt.want) {
				t.Errorf("checkRun = %v, want %v", err, tt.want)
			}
		})
	}
}

// widenOnce widens the first tcp:9090 permission to ports 1-9090 (once:
// the provider's next convergence would notice and repair it).
func widenOnce() func(string, url.Values) {
	done := false
	return func(action string, q url.Values) {
		if !done && action == "AuthorizeSecurityGroupIngress" && q.Get("IpPermissions.1.FromPort") == "9090" {
			q.Set("IpPermissions.1.FromPort", "1")
			done = true
		}
	}
}
