package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/encfs"
)

func setHook(t *testing.T, h func(stage, id string) error) {
	testHookCreate = h
	t.Cleanup(func() { testHookCreate = nil })
}

// TestCreateFailureUndone: a create failing mid-way leaves nothing.
func TestCreateFailureUndone(t *testing.T) {
	p := newTestProvider(t)
	key := newTestKey(t)
	boom := errors.New("injected failure")
	setHook(t, func(stage, id string) error {
		if stage == "files" {
			return boom
		}
		return nil
	})
	_, err := p.CreateInstance(context.Background(), compute.InstanceSpec{Name: "undo", SSHKeys: []string{key.auth}})
	if !errors.Is(err, boom) {
		t.Fatalf("create: %v", err)
	}
	if insts, _ := p.ListInstances(context.Background(), compute.ListOptions{}); len(insts) != 0 {
		t.Errorf("instances after failed create: %v", insts)
	}
	if left := instanceObjects(t, p); len(left) > 0 {
		t.Errorf("failed create left: %v", left)
	}
}

// TestCrashGC: a create interrupted after the network and volume exist
// (as if its process died), and a running instance whose record vanished,
// are both removed by GC, down to the last object.
func TestCrashGC(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)

	// An orphan: a running instance whose record is deleted.
	orphan := create(t, p, compute.InstanceSpec{Name: "orphan", SSHKeys: []string{key.auth}})
	rec, err := p.st.instance(orphan.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.st.remove("instances", orphan.ID); err != nil {
		t.Fatal(err)
	}

	setHook(t, func(stage, id string) error {
		if stage == "volume" {
			return errSimulatedCrash
		}
		return nil
	})
	_, err = p.CreateInstance(ctx, compute.InstanceSpec{Name: "crash", SSHKeys: []string{key.auth}})
	if !errors.Is(err, errSimulatedCrash) {
		t.Fatalf("create: %v", err)
	}
	testHookCreate = nil
	insts, _ := p.ListInstances(ctx, compute.ListOptions{})
	if len(insts) != 1 || insts[0].Status != compute.StatusFailed {
		t.Fatalf("after crash: %+v", insts)
	}
	crashed := insts[0].ID
	left := instanceObjects(t, p)
	if !containsSubstr(left, crashed) || !containsSubstr(left, orphan.ID) {
		t.Fatalf("before GC the crashed and orphan instances should have objects: %v", left)
	}

	rep, err := p.GC(ctx)
	if err != nil {
		t.Fatalf("GC: %v (removed %v)", err, rep.Removed)
	}
	t.Logf("GC removed %v", rep.Removed)
	if !containsSubstr(rep.Removed, crashed) || !containsSubstr(rep.Removed, orphan.ID) {
		t.Errorf("GC report misses an instance: %v", rep.Removed)
	}
	if left := instanceObjects(t, p); len(left) > 0 {
		t.Errorf("after GC: %v", left)
	}
	if rec.Proc.Alive() {
		t.Errorf("orphan's nspawn process %d survives GC", rec.Proc.PID)
	}
	if insts, _ := p.ListInstances(ctx, compute.ListOptions{}); len(insts) != 0 {
		t.Errorf("instances after GC: %v", insts)
	}
	if rep, err := p.GC(ctx); err != nil || len(rep.Removed) != 0 {
		t.Errorf("second GC: %v %v", rep.Removed, err)
	}
}

func containsSubstr(list []string, s string) bool {
	for _, x := range list {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

// TestRefIDConcurrent: five concurrent creates with one RefID make one
// instance.
func TestRefIDConcurrent(t *testing.T) {
	p := newTestProvider(t)
	key := newTestKey(t)
	var wg sync.WaitGroup
	ids := make([]string, 5)
	errs := make([]error, 5)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst, err := p.CreateInstance(context.Background(), compute.InstanceSpec{
				Name: fmt.Sprintf("ref%d", i), RefID: "same-ref", SSHKeys: []string{key.auth}})
			errs[i] = err
			if err == nil {
				ids[i] = inst.ID
			}
		}()
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Errorf("create %d returned %s, create 0 returned %s", i, ids[i], ids[0])
		}
	}
	insts, _ := p.ListInstances(context.Background(), compute.ListOptions{})
	if len(insts) != 1 {
		t.Errorf("%d instances for one RefID", len(insts))
	}
	if _, err := compute.Wait(context.Background(), p, ids[0], compute.StatusRunning); err != nil {
		t.Fatal(err)
	}
}

// TestStopStartReboot: stop keeps the disk (closed), start brings the
// instance back with its data, reboot too; a container that dies is not
// reported running.
func TestStopStartReboot(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	hostCIDR, _ := p.CallerPrefixes(ctx)
	inst := create(t, p, compute.InstanceSpec{Name: "stst", SSHKeys: []string{key.auth},
		Rules: []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}})
	c := mustSSH(t, inst, key)
	run(t, c, "echo kept > /root/kept.txt && sync")
	c.Close()

	if err := p.StopInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetInstance(ctx, inst.ID)
	if got.Status != compute.StatusStopped {
		t.Fatalf("status after stop %s", got.Status)
	}
	if m, _ := encfs.Mounted(p.volDir(inst.ID)); m {
		t.Error("volume still mounted after stop")
	}
	if err := p.StartInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	inst, err := compute.Wait(ctx, p, inst.ID, compute.StatusRunning)
	if err != nil {
		t.Fatal(err)
	}
	c = mustSSH(t, inst, key)
	if got := run(t, c, "cat /root/kept.txt"); got != "kept" {
		t.Errorf("after start: %q", got)
	}
	c.Close()
	if err := p.RebootInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if inst, err = compute.Wait(ctx, p, inst.ID, compute.StatusRunning); err != nil {
		t.Fatal(err)
	}
	c = mustSSH(t, inst, key)
	run(t, c, "test -f /root/kept.txt")
	c.Close()

	// Kill the container behind the provider's back: it must not be
	// reported running.
	rec, _ := p.st.instance(inst.ID)
	syscall.Kill(rec.Proc.PID, syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && rec.Proc.Alive() {
		time.Sleep(20 * time.Millisecond)
	}
	got, _ = p.GetInstance(ctx, inst.ID)
	if got.Status == compute.StatusRunning || got.StatusReason == "" {
		t.Errorf("killed container reported %s (%q)", got.Status, got.StatusReason)
	}
	// And it can be started again.
	if err := p.StartInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err = compute.Wait(ctx, p, inst.ID, compute.StatusRunning); err != nil {
		t.Fatal(err)
	}
}

// TestHardening: private users, disjoint id ranges, no network changes
// from inside, io_uring denied, memory limit kills the hog not the
// instance.
func TestHardening(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	hostCIDR, _ := p.CallerPrefixes(ctx)
	rules := []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}
	i1 := create(t, p, compute.InstanceSpec{Name: "h1", SSHKeys: []string{key.auth}, Rules: rules})
	i2 := create(t, p, compute.InstanceSpec{Name: "h2", SSHKeys: []string{key.auth}, Rules: rules})
	r1, _ := p.st.instance(i1.ID)
	r2, _ := p.st.instance(i2.ID)
	if r1.UIDBase == 0 || r2.UIDBase == 0 || r1.UIDBase == r2.UIDBase ||
		(r1.UIDBase < r2.UIDBase+65536 && r2.UIDBase < r1.UIDBase+65536) {
		t.Fatalf("id ranges overlap or are missing: %#x %#x", r1.UIDBase, r2.UIDBase)
	}
	c := mustSSH(t, i1, key)
	if got := strings.Fields(run(t, c, "cat /proc/self/uid_map")); len(got) != 3 || got[1] != strconv.FormatUint(uint64(r1.UIDBase), 10) || got[2] != "65536" {
		t.Errorf("uid_map %v, want base %d", got, r1.UIDBase)
	}
	run(t, c, "touch /root/made-inside && sync")
	fi, err := os.Stat(p.volDir(i1.ID) + "/data/upper/root/made-inside")
	if err != nil {
		t.Fatal(err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != r1.UIDBase {
		t.Errorf("file made by root inside is owned by host uid %d, want %d", uid, r1.UIDBase)
	}
	for _, cmd := range []string{
		"ip addr add 10.232.250.99/24 dev eth0",
		"ip route add 10.9.9.0/24 via " + r1.Subnet.Addr().Next().String(),
		"ip link set eth0 address 02:00:00:00:00:99",
		"ip link add dummy0 type dummy",
		"echo 4G > /sys/fs/cgroup/memory/memory.limit_in_bytes",
	} {
		if out, err := runErr(c, cmd); err == nil {
			t.Errorf("root inside could %q: %s", cmd, out)
		}
	}
	// io_uring_setup (425) is filtered: EPERM (1), where an unfiltered
	// call with these arguments fails with EFAULT or EINVAL.
	if got := run(t, c, `perl -e 'syscall(425, 1, 0); print $!+0'`); got != "1" {
		t.Errorf("io_uring_setup errno %s, want EPERM", got)
	}
	// A process exceeding the memory limit (1 GiB for "small") is killed;
	// the instance keeps running.
	if out, err := runErr(c, `perl -e '$x = "x" x (1536*1024*1024); print length $x'`); err == nil {
		t.Errorf("allocating 1.5 GiB in a 1 GiB instance succeeded: %s", out)
	}
	if got, _ := runErr(c, "systemctl is-system-running"); got != "running" {
		t.Errorf("after the OOM kill the instance is %q", got)
	}
	// A full /dev/shm does not take the instance down either.
	runErr(c, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=2000 2>/dev/null")
	if got, err := runErr(c, "systemctl is-system-running; rm -f /dev/shm/fill"); err != nil || got != "running" {
		t.Errorf("after filling /dev/shm: %q %v", got, err)
	}
}

// TestRestartAfterNetworkLoss: after the router namespace is gone (as after
// a host reboot: it lives in /run), a new Provider restores cluster
// bridges, and StartInstance re-attaches the instance with its rules.
func TestRestartAfterNetworkLoss(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "rb"}); err != nil {
		t.Fatal(err)
	}
	hostCIDR, _ := p.CallerPrefixes(ctx)
	inst := create(t, p, compute.InstanceSpec{Name: "rb1", Cluster: "rb", SSHKeys: []string{key.auth},
		Rules: []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}})
	if err := p.StopInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if err := p.net.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	p2, err := New(ctx, p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.StartInstance(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	inst, err = compute.Wait(ctx, p2, inst.ID, compute.StatusRunning)
	if err != nil {
		t.Fatal(err)
	}
	c := mustSSH(t, inst, key)
	run(t, c, "true")
}

// TestNameConflict: a second instance may not take a live instance's name
// under another RefID; the same RefID returns the existing instance.
func TestNameConflict(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	a, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "dup", RefID: "r1", SSHKeys: []string{key.auth}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "dup", RefID: "r2", SSHKeys: []string{key.auth}}); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("same name, other RefID: %v", err)
	}
	b, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "dup", RefID: "r1", SSHKeys: []string{key.auth}})
	if err != nil || b.ID != a.ID {
		t.Errorf("same RefID: %v %v", b, err)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "x", Cluster: "nope", SSHKeys: []string{key.auth}}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("unknown cluster: %v", err)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "y", SSHKeys: []string{key.auth},
		Rules: []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(1), SourceClusters: []string{"nope"}}}}); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("unknown source cluster: %v", err)
	}
	if _, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "z", Type: "huge", SSHKeys: []string{key.auth}}); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("unknown type: %v", err)
	}
	if _, err := p.AddRule(ctx, compute.InstanceTarget("i-00000000"), compute.RuleSpec{Protocol: compute.ProtocolICMP, SourceCIDRs: nil}); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("rule without source: %v", err)
	}
	if err := p.TerminateInstance(ctx, "i-00000000"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("terminate unknown: %v", err)
	}
	if err := p.RevokeRule(ctx, "fw-0000"); !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "c1"}); !errors.Is(err, compute.ErrConflict) {
		t.Errorf("duplicate cluster: %v", err)
	}
}
