// Package cgroups creates per-instance control groups on a hybrid cgroup
// host (cgroup v2 mounted at /sys/fs/cgroup/unified with no useful
// controllers; v1 hierarchies name=systemd, memory, cpu, cpuacct, pids, ...
// under /sys/fs/cgroup), sets resource limits in them, and reads usage back.
//
// systemd-nspawn started with --keep-unit on a host whose PID 1 is not
// systemd splits the cgroup it was started in into payload/ and supervisor/.
// A launcher therefore moves itself into an instance's own groups (by
// writing its PID to every file ProcsFiles returns) before it execs nspawn;
// nspawn's children then land below the instance's groups and inherit the
// limits.
//
// All functions that change state need root.
package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"golang.org/x/sys/unix"
)

// Hierarchy names, in the order of Group.Paths and FeatureSet.Hierarchies.
const (
	Unified = "unified" // cgroup v2 at /sys/fs/cgroup/unified
	Systemd = "systemd" // v1 name=systemd, which nspawn requires on a hybrid host
	Memory  = "memory"
	CPU     = "cpu"
	CPUAcct = "cpuacct"
	PIDs    = "pids"
)

var hierarchies = []string{Unified, Systemd, Memory, CPU, CPUAcct, PIDs}

// root is where the hierarchies are mounted.
const root = "/sys/fs/cgroup"

// Limits are resource limits for one group. A zero field means unlimited.
type Limits struct {
	MemoryBytes     int64 // memory.limit_in_bytes
	CPUQuotaMicros  int64 // cpu.cfs_quota_us: CPU time allowed per period, summed over all CPUs
	CPUPeriodMicros int64 // cpu.cfs_period_us; 0 means 100000 (100 ms)
	PIDs            int64 // pids.max
}

// DefaultCPUPeriodMicros is the CFS period used when Limits leaves it zero.
const DefaultCPUPeriodMicros = 100000

// Group is one instance's set of cgroup directories, one per hierarchy that
// exists on this host. A Group rebuilt from a saved Name and Paths works
// like one returned by Open: callers can persist Paths in an instance
// record, which also finds the memory group when a later process runs in a
// different memory cgroup.
type Group struct {
	Name  string
	Paths []string // absolute directories, in FeatureSet.Hierarchies order, without duplicates
}

// Stats is a snapshot of a group's usage counters, its descendants
// included. Counters of hierarchies the host lacks are zero.
type Stats struct {
	MemoryUsage    int64 // memory.usage_in_bytes
	MemoryMaxUsage int64 // memory.max_usage_in_bytes
	MemoryLimit    int64 // memory.limit_in_bytes (0: unlimited)
	MemoryFailcnt  int64 // memory.failcnt: times usage hit the limit
	OOMKills       int64 // oom_kill in memory.oom_control
	CPUUsageNanos  int64 // cpuacct.usage
	NrPeriods      int64 // cpu.stat nr_periods
	NrThrottled    int64 // cpu.stat nr_throttled
	ThrottledNanos int64 // cpu.stat throttled_time
	PIDsCurrent    int64 // pids.current
	PIDsMax        int64 // pids.max (0: unlimited)
	PIDsMaxEvents  int64 // "max" in pids.events: forks refused by pids.max
}

// FeatureSet says which hierarchies this host has, and therefore which
// limits Create can enforce.
type FeatureSet struct {
	Hierarchies []string // present hierarchies
	Memory      bool     // memory limit and accounting
	CPU         bool     // CPU quota
	CPUAcct     bool     // CPU usage accounting
	PIDs        bool     // process count limit
}

type hostInfo struct {
	mounts map[string]string // hierarchy -> mount directory (symlinks resolved)
	memOwn string            // the calling process's v1 memory cgroup, e.g. /process_api/x
	err    error
}

// host is computed once: hierarchies are mounted at boot, and a process's
// own memory cgroup does not change under it (this package never moves the
// calling process).
var host = sync.OnceValue(detect)

func detect() hostInfo {
	h := hostInfo{mounts: map[string]string{}}
	for _, name := range hierarchies {
		dir, err := filepath.EvalSymlinks(filepath.Join(root, name))
		if err != nil {
			continue
		}
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) != nil {
			continue
		}
		want := int64(unix.CGROUP_SUPER_MAGIC)
		if name == Unified {
			want = unix.CGROUP2_SUPER_MAGIC
		}
		if int64(st.Type) == want {
			h.mounts[name] = dir
		}
	}
	if _, ok := h.mounts[Memory]; ok {
		own, err := ownCgroup("/proc/self/cgroup", "memory")
		if err != nil {
			h.err = err
			delete(h.mounts, Memory)
		}
		h.memOwn = own
	}
	return h
}

// ownCgroup returns the path of the calling process's cgroup in the v1
// hierarchy with the given controller, from a /proc/<pid>/cgroup file.
func ownCgroup(file, controller string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("cgroups: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) == 3 && slices.Contains(strings.Split(f[1], ","), controller) {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("cgroups: no %s controller in %s", controller, file)
}

// Features reports the hierarchies present on this host.
func Features() FeatureSet {
	h := host()
	var fs FeatureSet
	for _, name := range hierarchies {
		if _, ok := h.mounts[name]; ok {
			fs.Hierarchies = append(fs.Hierarchies, name)
		}
	}
	_, fs.Memory = h.mounts[Memory]
	_, fs.CPU = h.mounts[CPU]
	_, fs.CPUAcct = h.mounts[CPUAcct]
	_, fs.PIDs = h.mounts[PIDs]
	return fs
}

// base returns the directory under which groups of prefix live in
// hierarchy name. For memory it is the one under our own memory cgroup.
func (h hostInfo) base(name, prefix string) string {
	if name == Memory {
		// Under our own memory cgroup: on this machine kind it is owned by
		// the machine's init, and nesting keeps its limits over ours.
		return filepath.Join(h.mounts[name], h.memOwn, prefix)
	}
	return filepath.Join(h.mounts[name], prefix)
}

// bases returns every directory that may hold groups of prefix in
// hierarchy name: base first, then, for memory, <prefix> directories under
// other memory cgroups. A process in another memory cgroup (another shell,
// another session) made those, and Open, List and Remove must still find
// them or they would leak.
func (h hostInfo) bases(name, prefix string) []string {
	own := h.base(name, prefix)
	out := []string{own}
	if name != Memory {
		return out
	}
	root := h.mounts[Memory]
	depth := func(p string) int { return strings.Count(strings.TrimPrefix(p, root), "/") }
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil || !d.IsDir():
			return nil
		case p == own:
			return fs.SkipDir
		case d.Name() == prefix && p != root:
			out = append(out, p)
			return fs.SkipDir
		case depth(p) >= maxMemoryDepth:
			return fs.SkipDir
		}
		return nil
	})
	return out
}

// maxMemoryDepth bounds the search for other processes' memory groups:
// deep enough for /process_api/<session>/<prefix> or
// /user.slice/user-1000.slice/session-1.scope/<prefix>.
const maxMemoryDepth = 4

// dir returns the directory of group name in hierarchy hn: an existing one
// if there is one, else the one under base.
func (h hostInfo) dir(hn, prefix, name string) string {
	for _, b := range h.bases(hn, prefix) {
		d := filepath.Join(b, name)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			return d
		}
	}
	return filepath.Join(h.base(hn, prefix), name)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

func checkName(field, s string) error {
	if !nameRE.MatchString(s) {
		return compute.InvalidField(field, s, "want 1-64 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
	}
	return nil
}

func (l Limits) validate() error {
	f := Features()
	switch {
	case l.MemoryBytes < 0:
		return compute.InvalidField("limits.memoryBytes", strconv.FormatInt(l.MemoryBytes, 10), "negative")
	case l.MemoryBytes > 0 && l.MemoryBytes < 4<<20:
		return compute.InvalidField("limits.memoryBytes", strconv.FormatInt(l.MemoryBytes, 10), "below 4 MiB")
	case l.CPUQuotaMicros < 0:
		return compute.InvalidField("limits.cpuQuotaMicros", strconv.FormatInt(l.CPUQuotaMicros, 10), "negative")
	case l.CPUQuotaMicros > 0 && l.CPUQuotaMicros < 1000:
		return compute.InvalidField("limits.cpuQuotaMicros", strconv.FormatInt(l.CPUQuotaMicros, 10), "below the kernel minimum of 1000")
	case l.CPUPeriodMicros != 0 && (l.CPUPeriodMicros < 1000 || l.CPUPeriodMicros > 1000000):
		return compute.InvalidField("limits.cpuPeriodMicros", strconv.FormatInt(l.CPUPeriodMicros, 10), "want 1000-1000000")
	case l.PIDs < 0:
		return compute.InvalidField("limits.pids", strconv.FormatInt(l.PIDs, 10), "negative")
	case l.MemoryBytes > 0 && !f.Memory:
		return fmt.Errorf("cgroups: memory limit: no v1 memory hierarchy on this host: %w", compute.ErrUnsupported)
	case l.CPUQuotaMicros > 0 && !f.CPU:
		return fmt.Errorf("cgroups: CPU quota: no v1 cpu hierarchy on this host: %w", compute.ErrUnsupported)
	case l.PIDs > 0 && !f.PIDs:
		return fmt.Errorf("cgroups: pids limit: no v1 pids hierarchy on this host: %w", compute.ErrUnsupported)
	}
	return nil
}

// Create makes the group <prefix>/<name> in every hierarchy present: under
// the hierarchy root for unified, systemd, cpu, cpuacct and pids, and under
// the calling process's own v1 memory cgroup for memory. It then sets l.
// Existing directories are reused and their limits set to l. A limit whose
// hierarchy is missing is an error wrapping compute.ErrUnsupported; on any
// error the directories Create made are removed again. The <prefix>
// directories are shared by all groups of a prefix and are left in place.
func Create(prefix, name string, l Limits) (_ *Group, err error) {
	if err := checkName("prefix", prefix); err != nil {
		return nil, err
	}
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	if err := l.validate(); err != nil {
		return nil, err
	}
	h := host()
	if h.err != nil {
		return nil, h.err
	}
	g := &Group{Name: name}
	var made []string
	defer func() {
		if err != nil {
			for _, d := range slices.Backward(made) {
				os.Remove(d)
			}
		}
	}()
	for _, hn := range hierarchies {
		if _, ok := h.mounts[hn]; !ok {
			continue
		}
		// Reuse the group's directory if it exists (for memory possibly
		// under another process's memory cgroup), so a restart does not
		// leave the old one behind.
		dir := h.dir(hn, prefix, name)
		if err := os.Mkdir(filepath.Dir(dir), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
		err := os.Mkdir(dir, 0o755)
		switch {
		case err == nil:
			made = append(made, dir)
		case errors.Is(err, fs.ErrExist):
		default:
			return nil, fmt.Errorf("cgroups: %w", err)
		}
		g.add(hn, dir)
	}
	if len(g.Paths) == 0 {
		return nil, fmt.Errorf("cgroups: no cgroup hierarchy mounted under %s: %w", root, compute.ErrPrecondition)
	}
	if err := g.SetLimits(l); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *Group) add(hn, dir string) {
	// cpu and cpuacct are often co-mounted (cpu,cpuacct): one directory.
	if !slices.Contains(g.Paths, dir) {
		g.Paths = append(g.Paths, dir)
	}
}

// Open returns the existing group <prefix>/<name>, or an error wrapping
// compute.ErrNotFound if it exists in no hierarchy.
func Open(prefix, name string) (*Group, error) {
	if err := checkName("prefix", prefix); err != nil {
		return nil, err
	}
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	h := host()
	g := &Group{Name: name}
	for _, hn := range hierarchies {
		if _, ok := h.mounts[hn]; !ok || (hn == Memory && h.err != nil) {
			continue
		}
		dir := h.dir(hn, prefix, name)
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			g.add(hn, dir)
		}
	}
	if len(g.Paths) == 0 {
		return nil, fmt.Errorf("cgroups: group %s/%s: %w", prefix, name, compute.ErrNotFound)
	}
	return g, nil
}

// List returns the names of the groups under prefix in any hierarchy,
// sorted, for garbage collection.
func List(prefix string) ([]string, error) {
	if err := checkName("prefix", prefix); err != nil {
		return nil, err
	}
	h := host()
	seen := map[string]bool{}
	for _, hn := range hierarchies {
		if _, ok := h.mounts[hn]; !ok || (hn == Memory && h.err != nil) {
			continue
		}
		for _, b := range h.bases(hn, prefix) {
			ents, err := os.ReadDir(b)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("cgroups: %w", err)
			}
			for _, e := range ents {
				if e.IsDir() {
					seen[e.Name()] = true
				}
			}
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Path returns the group's directory in hierarchy h, or "" if the host (or
// the group) lacks it.
func (g *Group) Path(h string) string {
	m := host().mounts[h]
	if m == "" {
		return ""
	}
	for _, p := range g.Paths {
		if strings.HasPrefix(p, m+"/") {
			return p
		}
	}
	return ""
}

// ProcsFiles returns the cgroup.procs file of each of the group's
// directories. A launcher writes its own PID ($$ in sh) into each before it
// execs the supervised program, so the program and its children start
// inside the group.
func (g *Group) ProcsFiles() []string {
	out := make([]string, len(g.Paths))
	for i, p := range g.Paths {
		out[i] = filepath.Join(p, "cgroup.procs")
	}
	return out
}

// SetLimits applies l to the group; zero fields remove the limit. Lowering
// the memory limit below current usage fails (the kernel reclaims first and
// gives up with EBUSY) and leaves the old limit.
func (g *Group) SetLimits(l Limits) error {
	if err := l.validate(); err != nil {
		return err
	}
	if d := g.Path(Memory); d != "" {
		v := int64(-1)
		if l.MemoryBytes > 0 {
			v = l.MemoryBytes
		}
		// With swap accounting, memory+swap gets the same limit, or an
		// instance could overflow its limit into swap. memsw may never be
		// below the memory limit, so lift it first and set it last.
		memsw := exists(filepath.Join(d, "memory.memsw.limit_in_bytes"))
		if memsw {
			if err := writeInt(d, "memory.memsw.limit_in_bytes", -1); err != nil {
				return err
			}
		}
		if err := writeInt(d, "memory.limit_in_bytes", v); err != nil {
			return err
		}
		if memsw {
			if err := writeInt(d, "memory.memsw.limit_in_bytes", v); err != nil {
				return err
			}
		}
	}
	if d := g.Path(CPU); d != "" {
		period := l.CPUPeriodMicros
		if period == 0 {
			period = DefaultCPUPeriodMicros
		}
		quota := int64(-1)
		if l.CPUQuotaMicros > 0 {
			quota = l.CPUQuotaMicros
		}
		// The kernel checks quota/period against the parent on every write;
		// lifting the quota first keeps the intermediate state valid.
		if err := writeInt(d, "cpu.cfs_quota_us", -1); err != nil {
			return err
		}
		if err := writeInt(d, "cpu.cfs_period_us", period); err != nil {
			return err
		}
		if err := writeInt(d, "cpu.cfs_quota_us", quota); err != nil {
			return err
		}
	}
	if d := g.Path(PIDs); d != "" {
		v := "max"
		if l.PIDs > 0 {
			v = strconv.FormatInt(l.PIDs, 10)
		}
		if err := writeFile(d, "pids.max", v); err != nil {
			return err
		}
	}
	return nil
}

// Limits reads the limits currently in force in the group's directories.
func (g *Group) Limits() (Limits, error) {
	var l Limits
	var err error
	if d := g.Path(Memory); d != "" {
		if l.MemoryBytes, err = readInt(d, "memory.limit_in_bytes"); err != nil {
			return l, err
		}
		if l.MemoryBytes >= unlimitedMemory {
			l.MemoryBytes = 0
		}
	}
	if d := g.Path(CPU); d != "" {
		if l.CPUQuotaMicros, err = readInt(d, "cpu.cfs_quota_us"); err != nil {
			return l, err
		}
		if l.CPUQuotaMicros < 0 {
			l.CPUQuotaMicros = 0
		}
		if l.CPUPeriodMicros, err = readInt(d, "cpu.cfs_period_us"); err != nil {
			return l, err
		}
	}
	if d := g.Path(PIDs); d != "" {
		if l.PIDs, err = readInt(d, "pids.max"); err != nil {
			return l, err
		}
	}
	return l, nil
}

// unlimitedMemory: v1 reports "no limit" as PAGE_COUNTER_MAX pages, a value
// near 2^63 rounded down to the page size.
const unlimitedMemory = 1 << 62

// Pids returns the processes in the group or any descendant group, in any
// hierarchy, sorted.
func (g *Group) Pids() ([]int, error) {
	seen := map[int]bool{}
	for _, p := range g.Paths {
		err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) { // removed under us
					return nil
				}
				return err
			}
			if !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
	}
	pids := make([]int, 0, len(seen))
	for pid := range seen {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	return pids, nil
}

// Remove removes the group's directories in every hierarchy, descendants
// first (nspawn creates payload/ and supervisor/ below it, and the
// container's systemd more below those). It kills nothing: if any process
// remains it fails with an error wrapping compute.ErrConflict and removes
// nothing. Removing a group that is already gone returns nil.
func (g *Group) Remove() error {
	pids, err := g.Pids()
	if err != nil {
		return err
	}
	if len(pids) > 0 {
		return fmt.Errorf("cgroups: group %s still has processes %v: %w", g.Name, pids, compute.ErrConflict)
	}
	for _, p := range g.Paths {
		var dirs []string
		err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cgroups: %w", err)
		}
		// WalkDir visits parents before children: remove in reverse.
		for _, d := range slices.Backward(dirs) {
			if err := rmdir(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// rmdir removes a cgroup directory. A process that just exited can keep a
// cgroup busy for a moment (until it is reaped), so EBUSY is retried
// briefly.
func rmdir(d string) error {
	for i := 0; ; i++ {
		err := unix.Rmdir(d)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && i < 50:
			time.Sleep(10 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("cgroups: remove %s: still in use: %w", d, compute.ErrConflict)
		default:
			return fmt.Errorf("cgroups: remove %s: %w", d, err)
		}
	}
}

// Stats reads the group's usage counters.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	var err error
	read := func(dst *int64, dir, file string) {
		if err == nil {
			*dst, err = readInt(dir, file)
		}
	}
	if d := g.Path(Memory); d != "" {
		read(&s.MemoryUsage, d, "memory.usage_in_bytes")
		read(&s.MemoryMaxUsage, d, "memory.max_usage_in_bytes")
		read(&s.MemoryLimit, d, "memory.limit_in_bytes")
		read(&s.MemoryFailcnt, d, "memory.failcnt")
		if s.MemoryLimit >= unlimitedMemory {
			s.MemoryLimit = 0
		}
		if err == nil {
			var kv map[string]int64
			kv, err = readKV(d, "memory.oom_control")
			s.OOMKills = kv["oom_kill"] // absent before Linux 4.13
		}
	}
	if d := g.Path(CPUAcct); d != "" {
		read(&s.CPUUsageNanos, d, "cpuacct.usage")
	}
	if d := g.Path(CPU); d != "" && err == nil {
		var kv map[string]int64
		kv, err = readKV(d, "cpu.stat")
		s.NrPeriods, s.NrThrottled, s.ThrottledNanos = kv["nr_periods"], kv["nr_throttled"], kv["throttled_time"]
	}
	if d := g.Path(PIDs); d != "" {
		read(&s.PIDsCurrent, d, "pids.current")
		read(&s.PIDsMax, d, "pids.max")
		if err == nil {
			var kv map[string]int64
			kv, err = readKV(d, "pids.events")
			s.PIDsMaxEvents = kv["max"]
		}
	}
	return s, err
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func writeFile(dir, file, v string) error {
	p := filepath.Join(dir, file)
	if err := os.WriteFile(p, []byte(v), 0); err != nil {
		return fmt.Errorf("cgroups: write %q to %s: %w", v, p, err)
	}
	return nil
}

func writeInt(dir, file string, v int64) error {
	return writeFile(dir, file, strconv.FormatInt(v, 10))
}

// readInt reads a one-number file; "max" (pids.max) reads as 0, unlimited.
func readInt(dir, file string) (int64, error) {
	p := filepath.Join(dir, file)
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("cgroups: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroups: %s: %w", p, err)
	}
	return v, nil
}

// readKV reads a file of "key value" lines.
func readKV(dir, file string) (map[string]int64, error) {
	p := filepath.Join(dir, file)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	kv := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				kv[f[0]] = v
			}
		}
	}
	return kv, nil
}

// RemovePrefix removes the empty <prefix> directories that hold a
// provider's groups, in every hierarchy. It fails with compute.ErrConflict
// while any group remains under them, and is a no-op when there are none.
func RemovePrefix(prefix string) error {
	names, err := List(prefix)
	if err != nil {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("cgroups: %d groups remain under %s: %w", len(names), prefix, compute.ErrConflict)
	}
	h := host()
	var errs []error
	for _, hn := range hierarchies {
		if _, ok := h.mounts[hn]; !ok || (hn == Memory && h.err != nil) {
			continue
		}
		for _, b := range h.bases(hn, prefix) {
			if err := rmdir(b); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
