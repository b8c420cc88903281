package aws

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/aws/smithy-go"

	"github.com/compute-sdk/compute"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		code string
		want error
	}{
		{"InvalidParameterValue", compute.ErrInvalidArgument},
		{"InvalidParameterCombination", compute.ErrInvalidArgument},
		{"MissingParameter", compute.ErrInvalidArgument},
		{"InvalidAMIID.Malformed", compute.ErrInvalidArgument},
		{"InsufficientInstanceCapacity", compute.ErrCapacity},
		{"RulesPerSecurityGroupLimitExceeded", compute.ErrQuota},
		{"InstanceLimitExceeded", compute.ErrQuota},
		{"VcpuLimitExceeded", compute.ErrQuota},
		{"SomeNewLimitExceeded", compute.ErrQuota},
		{"RequestLimitExceeded", compute.ErrTransient},
		{"Throttling", compute.ErrTransient},
		{"InternalError", compute.ErrTransient},
		{"InvalidInstanceID.NotFound", compute.ErrNotFound},
		{"InvalidGroup.NotFound", compute.ErrNotFound},
		{"InvalidAMIID.NotFound", compute.ErrNotFound},
		{"InvalidPermission.NotFound", compute.ErrNotFound},
		{"DependencyViolation", compute.ErrConflict},
		{"InvalidPermission.Duplicate", compute.ErrConflict},
		{"InvalidGroup.Duplicate", compute.ErrConflict},
		{"IncorrectInstanceState", compute.ErrConflict},
		{"UnauthorizedOperation", compute.ErrPrecondition},
		{"AuthFailure", compute.ErrPrecondition},
		{"Unsupported", compute.ErrUnsupported},
		{"SomethingElse", nil},
	}
	for _, tt := range tests {
		if got := classify(tt.code); got != tt.want {
			t.Errorf("classify(%q) = %v, want %v", tt.code, got, tt.want)
		}
		err := mapErr("op", &smithy.GenericAPIError{Code: tt.code, Message: "m"})
		if tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("mapErr(%s) = %v, not %v", tt.code, err, tt.want)
		}
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != tt.code {
			t.Errorf("mapErr(%s) lost the API error: %v", tt.code, err)
		}
	}
	if mapErr("op", nil) != nil {
		t.Error("mapErr(nil) != nil")
	}
}

// TestMappedErrorsOnTheWire sends each error code through the real client
// and checks the class a caller sees.
func TestMappedErrorsOnTheWire(t *testing.T) {
	tests := []struct {
		action, code string
		want         error
		call         func(ctx context.Context, p *Provider, id string) error
	}{
		{"RunInstances", "InsufficientInstanceCapacity", compute.ErrCapacity, nil},
		{"RunInstances", "InvalidParameterValue", compute.ErrInvalidArgument, nil},
		{"RunInstances", "InvalidParameterCombination", compute.ErrInvalidArgument, nil},
		{"RunInstances", "MissingParameter", compute.ErrInvalidArgument, nil},
		{"RunInstances", "InstanceLimitExceeded", compute.ErrQuota, nil},
		{"RunInstances", "VcpuLimitExceeded", compute.ErrQuota, nil},
		{"RunInstances", "UnauthorizedOperation", compute.ErrPrecondition, nil},
		{"CreateSecurityGroup", "SecurityGroupLimitExceeded", compute.ErrQuota, nil},
		{"AuthorizeSecurityGroupIngress", "RulesPerSecurityGroupLimitExceeded", compute.ErrQuota, nil},
		{"AuthorizeSecurityGroupIngress", "InvalidPermission.Duplicate", compute.ErrConflict, nil},
		{"DescribeInstances", "InvalidInstanceID.NotFound", compute.ErrNotFound, func(ctx context.Context, p *Provider, id string) error {
			_, err := p.GetInstance(ctx, id)
			return err
		}},
		{"StopInstances", "IncorrectInstanceState", compute.ErrConflict, func(ctx context.Context, p *Provider, id string) error { return p.StopInstance(ctx, id) }},
		{"StartInstances", "InsufficientInstanceCapacity", compute.ErrCapacity, func(ctx context.Context, p *Provider, id string) error { return p.StartInstance(ctx, id) }},
		{"RebootInstances", "UnauthorizedOperation", compute.ErrPrecondition, func(ctx context.Context, p *Provider, id string) error { return p.RebootInstance(ctx, id) }},
		{"DescribeSecurityGroups", "InvalidGroup.NotFound", compute.ErrNotFound, func(ctx context.Context, p *Provider, id string) error {
			_, err := p.GetCluster(ctx, "c")
			return err
		}},
		// Retried by the SDK (3 attempts) and still failing: transient.
		{"DescribeInstances", "RequestLimitExceeded", compute.ErrTransient, func(ctx context.Context, p *Provider, id string) error {
			_, err := p.ListInstances(ctx, compute.ListOptions{})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.action+"/"+tt.code, func(t *testing.T) {
			f := newFakeEC2(t)
			p := newTestProvider(t, f)
			id := ""
			if tt.call != nil {
				inst, err := p.CreateInstance(t.Context(), compute.InstanceSpec{Name: "a", SSHKeys: []string{testKey(t)}})
				if err != nil {
					t.Fatal(err)
				}
				id = inst.ID
				if _, err := p.GetInstance(t.Context(), id); err != nil { // running
					t.Fatal(err)
				}
			}
			codes := []string{tt.code}
			switch tt.code {
			case "RequestLimitExceeded":
				codes = []string{tt.code, tt.code, tt.code} // every SDK attempt
			case "InvalidPermission.Duplicate":
				codes = []string{tt.code, tt.code} // apply converges once more after a race
			}
			f.failNext(tt.action, codes...)
			var err error
			if tt.call != nil {
				err = tt.call(t.Context(), p, id)
			} else {
				_, err = p.CreateInstance(t.Context(), compute.InstanceSpec{Name: "b", SSHKeys: []string{testKey(t)},
					Rules: []compute.RuleSpec{mustParse(t, "tcp:443 from 192.0.2.0/24")}})
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.call == nil {
				// A failed create leaves no group behind.
				if v := f.groupByName(instanceGroupName("test-owner", "b")); v != nil {
					t.Errorf("failed create left security group %s", v.ID)
				}
			}
		})
	}
}

func TestThrottlingRetried(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"}); err != nil {
		t.Fatal(err)
	}
	f.resetCalls()
	f.failNext("DescribeSecurityGroups", "RequestLimitExceeded", "Throttling")
	c, err := p.GetCluster(ctx, "c")
	if err != nil || c.Name != "c" {
		t.Fatalf("GetCluster after two throttles = %v, %v", c, err)
	}
	if n := len(f.callsOf("DescribeSecurityGroups")); n != 3 {
		t.Errorf("DescribeSecurityGroups attempts = %d, want 3", n)
	}
	f.resetCalls()
	f.failNext("RunInstances", "RequestLimitExceeded")
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "a", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatalf("CreateInstance after a throttle: %v", err)
	}
	runs := f.callsOf("RunInstances")
	if len(runs) != 2 || runs[0].Params.Get("ClientToken") != runs[1].Params.Get("ClientToken") {
		t.Errorf("RunInstances retried %d times; the retry must reuse the client token", len(runs))
	}
	if list, _ := p.ListInstances(ctx, compute.ListOptions{}); len(list) != 1 || list[0].ID != inst.ID {
		t.Errorf("instances = %v", list)
	}
}

// TestApplyConvergesAfterARace: a concurrent change that makes one
// Authorize fail with InvalidPermission.Duplicate is absorbed by reading
// the group again.
func TestApplyConvergesAfterARace(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	cl, err := p.CreateCluster(t.Context(), compute.ClusterSpec{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	f.failNext("AuthorizeSecurityGroupIngress", "InvalidPermission.Duplicate")
	if _, err := p.AddRule(t.Context(), compute.ClusterTarget("c"), mustParse(t, "tcp:80 from 192.0.2.0/24")); err != nil {
		t.Fatalf("AddRule: %v", err)
	}
	want := []string{"-1|-1|-1|sg:" + cl.ID, "tcp|80|80|192.0.2.0/24"}
	if got := f.ingress(cl.ID); !slices.Equal(got, want) {
		t.Errorf("ingress = %v, want %v", got, want)
	}
}
