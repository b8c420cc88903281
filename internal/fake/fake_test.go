package fake

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/compute-sdk/compute"
)

const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIaJNYAfWZhZIg2+9gEZx3+8ZWUuZ6FXc5vAzzWZz5aR test"

// TestContract checks the rules the CLI tests rely on: idempotent create,
// not-found and conflict errors, no state change on bad input.
func TestContract(t *testing.T) {
	ctx := context.Background()
	p := New("fake")
	spec := compute.InstanceSpec{Name: "web", SSHKeys: []string{key}}
	a, err := p.CreateInstance(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.CreateInstance(ctx, spec)
	if err != nil || b.ID != a.ID {
		t.Fatalf("second create: %v %v, want %s", b, err, a.ID)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "web", RefID: "other", SSHKeys: []string{key}}); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("same name, other RefID: %v, want ErrConflict", err)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "x", SSHKeys: []string{key}, Cluster: "nope"}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("unknown cluster: %v", err)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "x"}); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("no keys: %v", err)
	}
	if _, err := p.GetInstance(ctx, "i-nope"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
	inv, _ := p.Inventory(ctx)
	if !slices.Equal(inv, []string{"instance " + a.ID}) {
		t.Errorf("inventory = %v", inv)
	}
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"}); err != nil {
		t.Fatal(err)
	}
	r, err := p.AddRule(ctx, compute.InstanceTarget(a.ID), compute.RuleSpec{Protocol: "udp", Ports: compute.Port(53), SourceClusters: []string{"c"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteCluster(ctx, "c"); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("delete a source cluster: %v, want ErrConflict", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.RevokeRule(ctx, r.ID))
	must(p.DeleteCluster(ctx, "c"))
	must(p.TerminateInstance(ctx, a.ID))
	if err := p.TerminateInstance(ctx, a.ID); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("terminate twice: %v", err)
	}
	if inv, _ := p.Inventory(ctx); len(inv) != 0 {
		t.Errorf("inventory after teardown = %v", inv)
	}
}
