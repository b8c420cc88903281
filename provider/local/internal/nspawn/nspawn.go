// Package nspawn starts and stops systemd-nspawn containers without a
// daemon: each container's nspawn process is started detached (its own
// session, stdin from /dev/null, output to a console log) and is the
// container's only supervisor, so it outlives the program that started it.
// A container is identified by the nspawn process's PID together with that
// process's start time, which makes liveness checks safe against PID reuse.
package nspawn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
)

// Process identifies a running nspawn process across programs: a PID alone
// could name a different process after the container exits.
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"` // field 22 of /proc/PID/stat, in clock ticks since boot
}

// Options describe one container launch.
type Options struct {
	Machine    string   // machine name (-M), also used for nspawn's run files
	Root       string   // prepared root directory (-D)
	NetNS      string   // network namespace file the container joins
	ProcsFiles []string // cgroup.procs files the launcher moves itself into before exec
	// PrivateUsersBase, when non-zero, runs the container in a user
	// namespace mapping its ids 0..65535 to base..base+65535. The root
	// directory must already carry those ids (no chown by nspawn).
	PrivateUsersBase uint32
	// ExtraArgs are appended to the nspawn command line (e.g. --tmpfs).
	ExtraArgs  []string
	ConsoleLog string // file receiving nspawn's and the console's output
}

// Args returns the launcher's argv: a shell that writes its own PID into
// every cgroup.procs file, then execs nsenter into the network namespace,
// which execs systemd-nspawn (the PID stays the same throughout).
//
// nsenter is used instead of --network-namespace-path because nspawn
// refuses to join a network namespace owned by the initial user namespace
// from inside a private user namespace, and instead of `ip netns exec`,
// which remounts /sys and breaks nspawn's cgroup detection.
func (o Options) Args() []string {
	script := `n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 121; shift; n=$((n-1)); done; exec "$@"`
	args := []string{"/bin/sh", "-c", script, "launcher", strconv.Itoa(len(o.ProcsFiles))}
	args = append(args, o.ProcsFiles...)
	args = append(args, "nsenter", "--net="+o.NetNS, "systemd-nspawn",
		"--boot", "--register=no", "--keep-unit", "--quiet",
		"--machine="+o.Machine, "--directory="+o.Root,
		"--console=read-only",
		// io_uring has a long record of kernel bugs reachable from
		// unprivileged code; nothing in the image needs it.
		"--system-call-filter=~io_uring_setup io_uring_enter io_uring_register",
		"--kill-signal=SIGRTMIN+3",
	)
	if o.PrivateUsersBase != 0 {
		args = append(args, fmt.Sprintf("--private-users=%d:65536", o.PrivateUsersBase), "--private-users-ownership=off")
	}
	args = append(args, o.ExtraArgs...)
	return args
}

// Start launches the container detached and returns its nspawn process. It
// does not wait for the boot. The process is reaped by a goroutine while
// this program runs (and by init after it exits).
func Start(o Options) (Process, error) {
	if o.Machine == "" || o.Root == "" || o.NetNS == "" || o.ConsoleLog == "" {
		return Process{}, compute.InvalidField("options", o.Machine, "machine, root, netns and console log are required")
	}
	for _, bin := range []string{"systemd-nspawn", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return Process{}, fmt.Errorf("nspawn: %s not found (apt-get install systemd-container util-linux): %w", bin, compute.ErrPrecondition)
		}
	}
	logf, err := os.OpenFile(o.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return Process{}, fmt.Errorf("nspawn: %w", err)
	}
	defer logf.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return Process{}, fmt.Errorf("nspawn: %w", err)
	}
	defer null.Close()
	args := o.Args()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, logf, logf
	cmd.Dir = "/"
	// A clean environment: nspawn passes some variables on to the container.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("nspawn: start: %w", err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() // reap it if it exits while we run
	st, err := StartTime(pid)
	if err != nil {
		return Process{}, fmt.Errorf("nspawn: launcher exited at once (see %s): %w", o.ConsoleLog, err)
	}
	return Process{PID: pid, StartTime: st}, nil
}

// StartTime returns the start time of process pid (clock ticks since boot).
func StartTime(pid int) (uint64, error) {
	st, _, err := stat(pid)
	return st, err
}

// stat returns the start time and state of pid.
func stat(pid int) (uint64, byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// comm (field 2) may contain spaces and parentheses: parse after the
	// last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("nspawn: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("nspawn: malformed /proc/%d/stat", pid)
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, err
	}
	return v, f[0][0], nil
}

// Alive reports whether p is still running (and is the same process).
func (p Process) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, state, err := stat(p.PID)
	return err == nil && st == p.StartTime && state != 'Z' && state != 'X'
}

// Leader returns the PID of the container's init (nspawn's child), or 0.
func (p Process) Leader() int {
	if !p.Alive() {
		return 0
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", p.PID))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				return pid
			}
		}
	}
	return 0
}

// Stop asks the container to shut down (SIGTERM to nspawn, which halts the
// container's systemd cleanly), waits up to grace, then kills nspawn and
// everything in the container. It returns once the process is gone.
func (p Process) Stop(ctx context.Context, grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	if err := unix.Kill(p.PID, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("nspawn: signal %d: %w", p.PID, err)
	}
	if p.wait(ctx, grace) {
		return nil
	}
	if p.Alive() {
		unix.Kill(p.PID, unix.SIGKILL)
	}
	if p.wait(ctx, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("nspawn: process %d did not exit after SIGKILL: %w", p.PID, compute.ErrTransient)
}

// Kill kills nspawn at once; the kernel then kills the container's
// processes (they are in nspawn's PID namespace).
func (p Process) Kill(ctx context.Context) error {
	if !p.Alive() {
		return nil
	}
	unix.Kill(p.PID, unix.SIGKILL)
	if p.wait(ctx, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("nspawn: process %d did not exit after SIGKILL: %w", p.PID, compute.ErrTransient)
}

func (p Process) wait(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !p.Alive() {
			return true
		}
		select {
		case <-ctx.Done():
			return !p.Alive()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return !p.Alive()
}

// Cleanup removes what nspawn leaves behind under /run after machine,
// booted from the directory root, exits. Call it while root is still
// mounted: nspawn names its image lock after root's device and inode.
func Cleanup(machine, root string) error {
	var errs []error
	paths := []string{
		filepath.Join("/run/systemd/nspawn/propagate", machine),
		filepath.Join("/run/systemd/nspawn/unix-export", machine),
	}
	var st unix.Stat_t
	if root != "" && unix.Stat(root, &st) == nil {
		paths = append(paths, fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino))
	}
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists nspawn run files whose machine name starts with prefix.
func Leftovers(prefix string) []string {
	var out []string
	for _, d := range []string{"/run/systemd/nspawn/propagate", "/run/systemd/nspawn/unix-export"} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				out = append(out, filepath.Join(d, e.Name()))
			}
		}
	}
	return out
}
