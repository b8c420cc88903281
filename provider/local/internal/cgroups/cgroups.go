// Package cgroups creates per-instance control groups on a hybrid cgroup
// host (cgroup v2 mounted at /sys/fs/cgroup/unified with no useful
// controllers, v1 hierarchies name=systemd, memory, cpu, cpuacct, pids, ...
// under /sys/fs/cgroup), sets resource limits in them, and reads usage back.
//
// systemd-nspawn started with --keep-unit on a host whose PID 1 is not
// systemd splits the cgroup it was started in into payload/ and supervisor/.
// A launcher therefore moves itself into an instance's own groups (by
// writing its PID to every file ProcsFiles returns) before it execs nspawn.
//
// All functions need root.
package cgroups

import "errors"

var errTODO = errors.New("cgroups: not implemented yet")

// Hierarchy names as used in Group.Paths order and Features.
const (
	Unified = "unified" // cgroup v2, /sys/fs/cgroup/unified
	Systemd = "systemd" // v1 name=systemd
	Memory  = "memory"
	CPU     = "cpu"
	CPUAcct = "cpuacct"
	PIDs    = "pids"
)

// Limits are resource limits for one group. A zero field means unlimited.
type Limits struct {
	MemoryBytes     int64 // memory.limit_in_bytes
	CPUQuotaMicros  int64 // cpu.cfs_quota_us; CPU time allowed per period
	CPUPeriodMicros int64 // cpu.cfs_period_us; 0 means the kernel default (100000)
	PIDs            int64 // pids.max
}

// Group is one instance's set of cgroup directories, one per hierarchy that
// exists on this host.
type Group struct {
	Name  string
	Paths []string // absolute directories, in the order of Features().Hierarchies
}

// Stats is a snapshot of a group's usage counters. Counters of hierarchies
// the host lacks are zero.
type Stats struct {
	MemoryUsage    int64 // memory.usage_in_bytes
	MemoryMaxUsage int64 // memory.max_usage_in_bytes
	MemoryLimit    int64 // memory.limit_in_bytes
	MemoryFailcnt  int64 // memory.failcnt
	OOMKills       int64 // oom_kill in memory.oom_control
	CPUUsageNanos  int64 // cpuacct.usage
	NrPeriods      int64 // cpu.stat nr_periods
	NrThrottled    int64 // cpu.stat nr_throttled
	ThrottledNanos int64 // cpu.stat throttled_time
	PIDsCurrent    int64 // pids.current
	PIDsMaxEvents  int64 // "max" in pids.events: forks refused by pids.max
}

// FeatureSet says which hierarchies this host has, and therefore which
// limits Create can enforce.
type FeatureSet struct {
	Hierarchies []string // present hierarchies, in Group.Paths order
	Memory      bool     // memory limits and accounting
	CPU         bool     // CPU quota
	CPUAcct     bool     // CPU usage accounting
	PIDs        bool     // process count limit
}

// Features reports the hierarchies present on this host.
func Features() FeatureSet { return FeatureSet{} }

// Create makes the group <prefix>/<name> in every hierarchy present: under
// the hierarchy root for unified, systemd, cpu, cpuacct and pids, and under
// the calling process's own v1 memory cgroup for memory (that cgroup may be
// owned by the machine's init, and a nested group keeps its limits in
// force). It then sets l. Existing directories are reused and their limits
// reset to l. A limit whose hierarchy is missing is an error wrapping
// compute.ErrUnsupported; on any error the directories made are removed.
func Create(prefix, name string, l Limits) (*Group, error) { return nil, errTODO }

// Open returns the existing group <prefix>/<name>, or an error wrapping
// compute.ErrNotFound if it exists in no hierarchy.
func Open(prefix, name string) (*Group, error) { return nil, errTODO }

// List returns the names of the groups under prefix in any hierarchy,
// sorted, for garbage collection.
func List(prefix string) ([]string, error) { return nil, errTODO }

// SetLimits applies l to the group; zero fields remove the limit.
func (g *Group) SetLimits(l Limits) error { return errTODO }

// Path returns the group's directory in hierarchy h, or "" if the host lacks it.
func (g *Group) Path(h string) string { return "" }

// ProcsFiles returns the cgroup.procs file of each of the group's
// directories. A launcher writes its own PID ($$ in sh) into each before it
// execs the supervised program, so the program and its children start
// inside the group.
func (g *Group) ProcsFiles() []string { return nil }

// Pids returns the processes in the group or any descendant group, sorted.
func (g *Group) Pids() ([]int, error) { return nil, errTODO }

// Remove removes the group's directories in every hierarchy, descendants
// first (nspawn creates payload/ and supervisor/ below it). It kills
// nothing: it fails with an error wrapping compute.ErrConflict if any
// process remains. Removing a group that is already gone returns nil.
func (g *Group) Remove() error { return errTODO }

// Stats reads the group's usage counters.
func (g *Group) Stats() (Stats, error) { return Stats{}, errTODO }
