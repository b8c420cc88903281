package cgroups

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

// needRoot skips t when the host cannot run the kernel-level tests, unless
// COMPUTE_REQUIRE_INTEGRATION=1 makes that a failure.
func needRoot(t *testing.T, want ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (writes under /sys/fs/cgroup)"
	}
	f := Features()
	for _, h := range want {
		if why == "" && !contains(f.Hierarchies, h) {
			why = fmt.Sprintf("no %s cgroup hierarchy on this host (have %v)", h, f.Hierarchies)
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("integration test cannot run: %s", why)
	}
	t.Skip(why)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// testPrefix returns a prefix no other test or package uses, and removes
// the prefix directories (which Remove leaves for other groups) afterwards.
func testPrefix(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	p := "cgt-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		if names, _ := List(p); len(names) != 0 {
			t.Errorf("groups left under %s: %v", p, names)
			for _, n := range names {
				if g, err := Open(p, n); err == nil {
					g.Remove()
				}
			}
		}
		h := host()
		for hn := range h.mounts {
			os.Remove(h.base(hn, p))
		}
	})
	return p
}

// startIn starts `sh -c script` the way the provider's launcher starts
// nspawn: a shell writes its own PID into every ProcsFiles entry, then
// execs the payload. It returns once the process is in the group.
func startIn(t *testing.T, g *Group, payload string) *exec.Cmd {
	t.Helper()
	script := `for f in "$@"; do echo $$ > "$f" || exit 97; done; exec ` + payload
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "launcher"}, g.ProcsFiles()...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// End only what this test started: its process group, by ID.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := g.Pids()
		if err != nil {
			t.Fatal(err)
		}
		if contains(itoa(pids), strconv.Itoa(cmd.Process.Pid)) {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never joined %v (group has %v)", cmd.Process.Pid, g.Paths, pids)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func itoa(v []int) []string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return s
}

// stop kills the test's own process group and waits until the group is
// empty.
func stop(t *testing.T, g *Group, cmd *exec.Cmd) {
	t.Helper()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := g.Pids()
		if err == nil && len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("group still has %v, %v", pids, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCreateValidates(t *testing.T) {
	tests := []struct {
		prefix, name string
		l            Limits
	}{
		{"", "a", Limits{}},
		{"p", "", Limits{}},
		{"p", "..", Limits{}},
		{"p", "a/b", Limits{}},
		{"../x", "a", Limits{}},
		{"p", ".hidden", Limits{}},
		{"p", "a", Limits{MemoryBytes: -1}},
		{"p", "a", Limits{MemoryBytes: 1024}},
		{"p", "a", Limits{CPUQuotaMicros: 500}},
		{"p", "a", Limits{CPUQuotaMicros: 50000, CPUPeriodMicros: 10}},
		{"p", "a", Limits{PIDs: -5}},
	}
	for _, tt := range tests {
		_, err := Create(tt.prefix, tt.name, tt.l)
		if !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("Create(%q, %q, %+v) = %v, want ErrInvalidArgument", tt.prefix, tt.name, tt.l, err)
		}
	}
}

func TestOwnCgroup(t *testing.T) {
	f := filepath.Join(t.TempDir(), "cgroup")
	os.WriteFile(f, []byte("9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/\n"), 0o600)
	for c, want := range map[string]string{"memory": "/process_api/abc", "cpuacct": "/x", "name=systemd": "/"} {
		if got, err := ownCgroup(f, c); err != nil || got != want {
			t.Errorf("ownCgroup(%s) = %q, %v; want %q", c, got, err, want)
		}
	}
	if _, err := ownCgroup(f, "pids"); err == nil {
		t.Error("ownCgroup(pids) succeeded on a file without it")
	}
}

func TestGroupLifecycle(t *testing.T) {
	needRoot(t, Unified, Systemd, Memory, CPU, CPUAcct, PIDs)
	prefix := testPrefix(t)
	l := Limits{MemoryBytes: 64 << 20, CPUQuotaMicros: 50000, CPUPeriodMicros: 100000, PIDs: 32}
	g, err := Create(prefix, "g1", l)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Paths) != len(Features().Hierarchies) {
		t.Fatalf("Paths = %v, want one per hierarchy %v", g.Paths, Features().Hierarchies)
	}
	own, err := ownCgroup("/proc/self/cgroup", "memory")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		Unified: "/sys/fs/cgroup/unified/" + prefix + "/g1",
		Systemd: "/sys/fs/cgroup/systemd/" + prefix + "/g1",
		Memory:  filepath.Join("/sys/fs/cgroup/memory", own, prefix, "g1"),
		CPU:     "/sys/fs/cgroup/cpu/" + prefix + "/g1",
		PIDs:    "/sys/fs/cgroup/pids/" + prefix + "/g1",
	}
	for h, p := range want {
		if got := g.Path(h); got != p {
			t.Errorf("Path(%s) = %q, want %q", h, got, p)
		}
	}

	// Limits read back, through the API and from the files themselves.
	if got, err := g.Limits(); err != nil || got != l {
		t.Fatalf("Limits() = %+v, %v; want %+v", got, err, l)
	}
	for file, v := range map[string]string{
		filepath.Join(g.Path(Memory), "memory.limit_in_bytes"): "67108864",
		// With swap accounting the limit covers swap too.
		filepath.Join(g.Path(Memory), "memory.memsw.limit_in_bytes"): "67108864",
		filepath.Join(g.Path(CPU), "cpu.cfs_quota_us"):               "50000",
		filepath.Join(g.Path(CPU), "cpu.cfs_period_us"):              "100000",
		filepath.Join(g.Path(PIDs), "pids.max"):                      "32",
	} {
		if strings.Contains(file, "memsw") && !exists(file) {
			continue // no swap accounting on this host
		}
		if b, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(b)) != v {
			t.Errorf("%s = %q, %v; want %s", file, b, err, v)
		}
	}

	// Open and List find it.
	if g2, err := Open(prefix, "g1"); err != nil || strings.Join(g2.Paths, ",") != strings.Join(g.Paths, ",") {
		t.Fatalf("Open = %v, %v", g2, err)
	}
	if names, err := List(prefix); err != nil || strings.Join(names, ",") != "g1" {
		t.Fatalf("List = %v, %v", names, err)
	}

	// A launched process lands in every hierarchy.
	cmd := startIn(t, g, "sleep 60")
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.SplitN(line, ":", 2); len(f) == 2 {
			have[f[1]] = true // controllers:path
		}
	}
	for _, line := range []string{
		":/" + prefix + "/g1", // the v2 hierarchy has no controller name
		"name=systemd:/" + prefix + "/g1",
		"memory:" + filepath.Join(own, prefix, "g1"),
		"cpu:/" + prefix + "/g1",
		"cpuacct:/" + prefix + "/g1",
		"pids:/" + prefix + "/g1",
	} {
		if !have[line] {
			t.Errorf("/proc/%d/cgroup lacks %q:\n%s", cmd.Process.Pid, line, b)
		}
	}

	// Remove refuses while a process is inside, and kills nothing.
	if err := g.Remove(); !errors.Is(err, compute.ErrConflict) {
		t.Fatalf("Remove with a process inside = %v, want ErrConflict", err)
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
		t.Fatalf("process gone after a refused Remove: %v", err)
	}

	// nspawn splits the group it starts in; Remove must take the children too.
	stop(t, g, cmd)
	for _, p := range g.Paths {
		if err := os.MkdirAll(filepath.Join(p, "payload", "init.scope"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(p, "supervisor"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, p := range g.Paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Remove: %v", p, err)
		}
	}
	if names, _ := List(prefix); len(names) != 0 {
		t.Fatalf("List after Remove = %v", names)
	}
	if _, err := Open(prefix, "g1"); !errors.Is(err, compute.ErrNotFound) {
		t.Fatalf("Open after Remove = %v, want ErrNotFound", err)
	}
	if err := g.Remove(); err != nil {
		t.Fatalf("second Remove = %v", err)
	}
}

// cpuShare runs two busy loops in g for about d and returns the CPU time
// they got, in cores (1.0 = one full core).
func cpuShare(t *testing.T, g *Group, d time.Duration) (float64, Stats) {
	t.Helper()
	before, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	cmd := startIn(t, g, `sh -c 'while :; do :; done & while :; do :; done'`)
	start := time.Now()
	time.Sleep(d)
	after, err := g.Stats()
	wall := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	stop(t, g, cmd)
	return float64(after.CPUUsageNanos-before.CPUUsageNanos) / float64(wall.Nanoseconds()), after
}

func TestCPUQuota(t *testing.T) {
	needRoot(t, CPU, CPUAcct)
	g, err := Create(testPrefix(t), "cpu", Limits{CPUQuotaMicros: 50000})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()

	limited, st := cpuShare(t, g, 2*time.Second)
	t.Logf("quota 50%% of a core: %.2f cores, nr_periods %d, nr_throttled %d, throttled %v",
		limited, st.NrPeriods, st.NrThrottled, time.Duration(st.ThrottledNanos))
	if limited > 0.6 {
		t.Errorf("two busy loops under a 50%% quota used %.2f cores", limited)
	}
	if limited < 0.05 {
		t.Errorf("busy loops used %.2f cores: did they run in the group at all?", limited)
	}
	if st.NrThrottled == 0 {
		t.Error("nr_throttled = 0: the quota never bit")
	}

	// The same load without the quota, to show the limit is what held it.
	if err := g.SetLimits(Limits{}); err != nil {
		t.Fatal(err)
	}
	free, _ := cpuShare(t, g, 2*time.Second)
	t.Logf("no quota: %.2f cores", free)
	if free < limited*1.3 {
		t.Errorf("without the quota the load used %.2f cores, with it %.2f: the quota made no difference", free, limited)
	}
}

func TestPIDsLimit(t *testing.T) {
	needRoot(t, PIDs)
	g, err := Create(testPrefix(t), "pids", Limits{PIDs: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	// Try to start 30 sleeps; the 10-process limit stops the rest. dash
	// exits on a failed fork, so the forking runs in an inner shell and the
	// launched process itself stays.
	cmd := startIn(t, g, `sh -c 'sh -c "for i in \$(seq 30); do sleep 60 & done" 2>/dev/null; sleep 60'`)
	var st Stats
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, err = g.Stats(); err != nil {
			t.Fatal(err)
		}
		if st.PIDsMaxEvents > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	pids, _ := g.Pids()
	t.Logf("pids.current %d, pids.max %d, refused forks %d, processes %d", st.PIDsCurrent, st.PIDsMax, st.PIDsMaxEvents, len(pids))
	if st.PIDsMaxEvents == 0 {
		t.Fatal("pids.events max = 0: no fork was refused")
	}
	if st.PIDsCurrent > 10 || len(pids) > 10 {
		t.Fatalf("%d processes in a group limited to 10", len(pids))
	}
	// Kill by PID, as the provider does with a stuck instance.
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	stop(t, g, cmd)
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryLimit(t *testing.T) {
	needRoot(t, Memory)
	g, err := Create(testPrefix(t), "mem", Limits{MemoryBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	// tail has to hold the whole newline-free input in memory.
	cmd := startIn(t, g, `sh -c 'head -c 200000000 /dev/zero | tail > /dev/null; echo rc=$?; sleep 60'`)
	deadline := time.Now().Add(20 * time.Second)
	var st Stats
	for {
		if st, err = g.Stats(); err != nil {
			t.Fatal(err)
		}
		if st.OOMKills > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("limit %d, max usage %d, failcnt %d, oom kills %d", st.MemoryLimit, st.MemoryMaxUsage, st.MemoryFailcnt, st.OOMKills)
	if st.OOMKills == 0 {
		t.Fatal("no OOM kill in a 32 MiB group asked for 200 MB")
	}
	if st.MemoryMaxUsage > st.MemoryLimit {
		t.Fatalf("max usage %d above limit %d", st.MemoryMaxUsage, st.MemoryLimit)
	}
	// The launcher itself survived: only the hog was killed.
	if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
		t.Fatalf("launcher died too: %v", err)
	}
	stop(t, g, cmd)
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
}

// TestMemoryGroupElsewhere: a group made by a process in another memory
// cgroup (another session) is found, reused and removed, not leaked.
func TestMemoryGroupElsewhere(t *testing.T) {
	needRoot(t, Memory)
	prefix := testPrefix(t)
	other := filepath.Join(host().mounts[Memory], prefix+"-session")
	dir := filepath.Join(other, prefix, "g")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(dir)
		os.Remove(filepath.Dir(dir))
		os.Remove(other)
	})
	if names, err := List(prefix); err != nil || strings.Join(names, ",") != "g" {
		t.Fatalf("List = %v, %v; want [g]", names, err)
	}
	g, err := Open(prefix, "g")
	if err != nil || g.Path(Memory) != dir {
		t.Fatalf("Open: Path(memory) = %q, %v; want %q", g.Path(Memory), err, dir)
	}
	// Create reuses it rather than making a second memory group.
	g, err = Create(prefix, "g", Limits{MemoryBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if g.Path(Memory) != dir {
		t.Fatalf("Create made %q, want the existing %q", g.Path(Memory), dir)
	}
	// A Group rebuilt from saved Paths works like the original.
	saved := &Group{Name: g.Name, Paths: append([]string(nil), g.Paths...)}
	if l, err := saved.Limits(); err != nil || l.MemoryBytes != 16<<20 {
		t.Fatalf("rebuilt group Limits = %+v, %v", l, err)
	}
	if err := saved.Remove(); err != nil {
		t.Fatal(err)
	}
	if exists(dir) {
		t.Fatal("memory group under the other session left behind")
	}
	if names, _ := List(prefix); len(names) != 0 {
		t.Fatalf("List after Remove = %v", names)
	}
}
