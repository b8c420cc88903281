package aws

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

func TestTerminateRetriesDependencyViolation(t *testing.T) {
	f := newFakeEC2(t)
	f.shutdownPolls = 3
	f.depViolations = 3
	p := newTestProvider(t, f)
	ctx := t.Context()
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"}); err != nil {
		t.Fatal(err)
	}
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "a", Cluster: "c", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	isg := f.groupByName(instanceGroupName("test-owner", "a"))

	if err := p.DeleteCluster(ctx, "c"); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("DeleteCluster with a member: %v, want ErrConflict", err)
	}
	f.resetCalls()
	if err := p.TerminateInstance(ctx, inst.ID); err != nil {
		t.Fatalf("TerminateInstance: %v", err)
	}
	if s := f.instance(inst.ID).State; s != "terminated" {
		t.Errorf("instance state = %s", s)
	}
	// The group is deleted only after the instance is terminated, and the
	// DependencyViolations while EC2 releases the interface are retried.
	var order []string
	for _, c := range f.calls {
		if c.Action == "TerminateInstances" || c.Action == "DeleteSecurityGroup" {
			order = append(order, c.Action)
		}
	}
	want := []string{"TerminateInstances", "DeleteSecurityGroup", "DeleteSecurityGroup", "DeleteSecurityGroup", "DeleteSecurityGroup"}
	if !slices.Equal(order, want) {
		t.Errorf("calls = %v, want %v", order, want)
	}
	if polls := len(f.callsOf("DescribeInstances")); polls < f.shutdownPolls {
		t.Errorf("terminate polled %d times; the instance was shutting down for %d polls", polls, f.shutdownPolls)
	}
	if f.groupByName(isg.Name) != nil {
		t.Error("instance security group still exists")
	}
	if err := p.TerminateInstance(ctx, inst.ID); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("terminating again: %v, want ErrNotFound", err)
	}
	if _, err := p.GetInstance(ctx, inst.ID); err != nil {
		t.Errorf("a terminated instance is still visible for a while: %v", err)
	}
	list, err := p.ListInstances(ctx, compute.ListOptions{})
	if err != nil || len(list) != 0 {
		t.Errorf("ListInstances after terminate = %v, %v", list, err)
	}
	if err := p.DeleteCluster(ctx, "c"); err != nil {
		t.Errorf("DeleteCluster: %v", err)
	}
	if _, err := p.GetCluster(ctx, "c"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("GetCluster after delete: %v", err)
	}
	inv, err := p.Inventory(ctx)
	if err != nil || len(inv) != 0 {
		t.Errorf("Inventory after teardown = %v, %v", inv, err)
	}
}

func TestTerminateGivesUpOnPersistentDependency(t *testing.T) {
	f := newFakeEC2(t)
	f.depViolations = 1000
	p := newTestProvider(t, f)
	inst, err := p.CreateInstance(t.Context(), compute.InstanceSpec{Name: "a", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	err = p.TerminateInstance(t.Context(), inst.ID)
	if !errors.Is(err, compute.ErrConflict) {
		t.Errorf("err = %v, want ErrConflict after %d attempts", err, maxDeleteAttempts)
	}
	if n := len(f.callsOf("DeleteSecurityGroup")); n != maxDeleteAttempts {
		t.Errorf("DeleteSecurityGroup attempts = %d, want %d", n, maxDeleteAttempts)
	}
	// GC finishes the job once EC2 lets go.
	f.mu.Lock()
	f.depLeft = map[string]int{}
	f.depViolations = 0
	f.mu.Unlock()
	rep, err := p.GC(t.Context())
	if err != nil || len(rep.Removed) != 1 || !strings.HasPrefix(rep.Removed[0], "security-group ") {
		t.Errorf("GC = %v, %v", rep, err)
	}
	if inv, _ := p.Inventory(t.Context()); len(inv) != 0 {
		t.Errorf("Inventory = %v", inv)
	}
}

func TestLifecycleAndInventory(t *testing.T) {
	f := newFakeEC2(t)
	f.shutdownPolls = 100
	p := newTestProvider(t, f)
	ctx := t.Context()
	cl, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c", Labels: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c"}); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("second CreateCluster: %v, want ErrConflict", err)
	}
	got, err := p.GetCluster(ctx, "c")
	if err != nil || got.ID != cl.ID || got.Labels["k"] != "v" || got.CreatedAt.IsZero() {
		t.Errorf("GetCluster = %+v, %v", got, err)
	}
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "a", Cluster: "c", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetInstance(ctx, inst.ID); err != nil { // pending -> running
		t.Fatal(err)
	}
	for _, step := range []struct {
		name string
		fn   func() error
		want string
	}{
		{"stop", func() error { return p.StopInstance(ctx, inst.ID) }, "stopping"},
		{"start", func() error { return p.StartInstance(ctx, inst.ID) }, "pending"},
		{"reboot", func() error { return p.RebootInstance(ctx, inst.ID) }, "running"},
	} {
		if err := step.fn(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if s := f.instance(inst.ID).State; s != step.want {
			t.Errorf("after %s: state %s, want %s", step.name, s, step.want)
		}
	}
	for _, tc := range []struct {
		state string
		want  compute.Status
	}{
		{"pending", compute.StatusRunning}, // the fake advances one step per describe
		{"stopping", compute.StatusStopped},
		{"shutting-down", compute.StatusTerminating},
	} {
		f.mu.Lock()
		f.instances[inst.ID].State = tc.state
		f.mu.Unlock()
		got, err := p.GetInstance(ctx, inst.ID)
		if err != nil || got.Status != tc.want {
			t.Errorf("state %s: status %v, %v; want %s", tc.state, got.Status, err, tc.want)
		}
	}
	f.mu.Lock()
	f.instances[inst.ID].State = "running"
	f.mu.Unlock()

	inv, err := p.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv) != 3 {
		t.Errorf("Inventory = %v, want the cluster group, the instance group and the instance", inv)
	}
	// Objects of another owner are invisible and untouched.
	f.mu.Lock()
	f.instances["i-0foreign"] = &fInstance{ID: "i-0foreign", State: "running", Tags: map[string]string{tagOwner: "someone-else"}}
	f.mu.Unlock()
	if _, err := p.GetInstance(ctx, "i-0foreign"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("GetInstance of a foreign instance: %v, want ErrNotFound", err)
	}
	if err := p.TerminateInstance(ctx, "i-0foreign"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("TerminateInstance of a foreign instance: %v, want ErrNotFound", err)
	}
	if n := len(f.callsOf("TerminateInstances")); n != 0 {
		t.Errorf("TerminateInstances sent %d times", n)
	}
	if inv2, _ := p.Inventory(ctx); len(inv2) != len(inv) {
		t.Errorf("Inventory lists a foreign object: %v", inv2)
	}
}

func TestHostKeysFromConsole(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	ctx := t.Context()
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "a", SSHKeys: []string{testKey(t)}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.GetInstance(ctx, inst.ID)
	if err != nil || len(got.SSH.HostKeys) != 0 {
		t.Fatalf("host keys before the console has them: %v, %v", got.SSH.HostKeys, err)
	}
	hk := testKey(t)
	f.mu.Lock()
	f.console[inst.ID] = "[   12.3] cloud-init[612]: Cloud-init v. 23.1 running 'modules:final'\n" +
		"ec2: #############################################################\n" +
		"ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n" +
		"ec2: 256 SHA256:abc root@ip-10-0-0-10 (ED25519)\n" +
		"ec2: -----END SSH HOST KEY FINGERPRINTS-----\n" +
		"-----BEGIN SSH HOST KEY KEYS-----\n" +
		"ssh-dss AAAAB3NzaC1kc3MAAACBAP== root@ip-10-0-0-10\n" +
		hk + " root@ip-10-0-0-10\n" +
		"-----END SSH HOST KEY KEYS-----\n" +
		"Cloud-init v. 23.1 finished\n"
	f.mu.Unlock()
	got, err = p.GetInstance(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.SSH.HostKeys) != 1 || got.SSH.HostKeys[0].PublicKey != hk || !strings.HasPrefix(got.SSH.HostKeys[0].Fingerprint, "SHA256:") {
		t.Fatalf("host keys = %+v, want %s", got.SSH.HostKeys, hk)
	}
	cb, err := got.SSH.HostKeyCallback()
	if err != nil || cb == nil {
		t.Fatalf("HostKeyCallback: %v", err)
	}
	// Cached: no further console reads.
	n := len(f.callsOf("GetConsoleOutput"))
	if _, err := p.GetInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if m := len(f.callsOf("GetConsoleOutput")); m != n {
		t.Errorf("console read again (%d -> %d)", n, m)
	}
	// Stored on the instance: another process finds them after the
	// console has moved on (a reboot replaces its output).
	if tags := f.instance(inst.ID).Tags; tags[tagHostKeyPrefix+"1"] != hk {
		t.Errorf("host key not stored in the instance's tags: %v", tags)
	}
	f.mu.Lock()
	f.console[inst.ID] = "rebooted; nothing about keys\n"
	f.mu.Unlock()
	p2 := newTestProvider(t, f)
	got, err = p2.GetInstance(ctx, inst.ID)
	if err != nil || len(got.SSH.HostKeys) != 1 || got.SSH.HostKeys[0].PublicKey != hk {
		t.Errorf("a new provider's GetInstance host keys = %+v, %v", got.SSH.HostKeys, err)
	}
}

func TestParseHostKeysLastBlock(t *testing.T) {
	k1, k2 := testKey(t), testKey(t)
	console := fmt.Sprintf("-----BEGIN SSH HOST KEY KEYS-----\n%s\n-----END SSH HOST KEY KEYS-----\nreboot\n-----BEGIN SSH HOST KEY KEYS-----\n%s\n-----END SSH HOST KEY KEYS-----\n", k1, k2)
	keys := parseHostKeys(console)
	if len(keys) != 1 || keys[0].PublicKey != k2 {
		t.Errorf("keys = %v, want the last block's", keys)
	}
	if keys := parseHostKeys("-----BEGIN SSH HOST KEY KEYS-----\n" + k1 + "\n"); keys != nil {
		t.Errorf("an unterminated block gave %v", keys)
	}
}

// TestConcurrentCreateSameRefID: creates racing on one RefID launch one
// instance and all return it.
func TestConcurrentCreateSameRefID(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	spec := compute.InstanceSpec{Name: "a", RefID: "same", SSHKeys: []string{testKey(t)},
		Rules: []compute.RuleSpec{mustParse(t, "tcp:443 from 192.0.2.0/24")}}
	const n = 4
	ids := make(chan string, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			inst, err := p.CreateInstance(t.Context(), spec)
			if err != nil {
				errs <- err
				return
			}
			ids <- inst.ID
		}()
	}
	var got []string
	for range n {
		select {
		case err := <-errs:
			t.Errorf("CreateInstance: %v", err)
		case id := <-ids:
			got = append(got, id)
		}
	}
	for _, id := range got {
		if id != got[0] {
			t.Errorf("concurrent creates returned %v", got)
			break
		}
	}
	f.mu.Lock()
	count := len(f.instances)
	f.mu.Unlock()
	if count != 1 {
		t.Errorf("%d instances launched, want 1", count)
	}
	isg := f.groupByName(instanceGroupName("test-owner", "same"))
	if v := f.audit(map[string][]string{isg.ID: {"tcp|443|443|192.0.2.0/24"}}); len(v) > 0 {
		t.Errorf("audit: %v", v)
	}
}

// TestCreateFailingAfterLaunchCleansUp: when storing the rules fails after
// the instance launched, the instance is terminated and its group deleted.
func TestCreateFailingAfterLaunchCleansUp(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	f.failNext("CreateTags", "UnauthorizedOperation")
	_, err := p.CreateInstance(t.Context(), compute.InstanceSpec{Name: "a", SSHKeys: []string{testKey(t)},
		Rules: []compute.RuleSpec{mustParse(t, "tcp:443 from 192.0.2.0/24")}})
	if !errors.Is(err, compute.ErrPrecondition) {
		t.Fatalf("err = %v, want ErrPrecondition", err)
	}
	if n := len(f.callsOf("TerminateInstances")); n != 1 {
		t.Errorf("TerminateInstances calls = %d, want 1", n)
	}
	if inv, err := p.Inventory(t.Context()); err != nil || len(inv) != 0 {
		t.Errorf("left behind: %v, %v", inv, err)
	}
}

func TestGCGrace(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f, func(c *Config) { c.GCGrace = time.Hour })
	// A group from a create in progress (or crashed a moment ago).
	if _, _, err := p.createGroup(t.Context(), instanceGroupName("test-owner", "k"), "compute instance x", map[string]string{
		tagOwner: "test-owner", tagKind: kindInstance, tagRefID: "k", tagCreated: time.Now().UTC().Format(time.RFC3339),
	}); err != nil {
		t.Fatal(err)
	}
	rep, err := p.GC(t.Context())
	if err != nil || len(rep.Removed) != 0 {
		t.Errorf("GC removed a young group: %v, %v", rep, err)
	}
	p.cfg.GCGrace = -1
	rep, err = p.GC(t.Context())
	if err != nil || len(rep.Removed) != 1 {
		t.Errorf("GC without grace = %v, %v; want the orphan removed", rep, err)
	}
}
