package nspawn

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	o := Options{Machine: "lt-i-0a1b2c3d", Root: "/r", NetNS: "/run/netns/lt-i-0a1b2c3d",
		ProcsFiles: []string{"/a/cgroup.procs", "/b/cgroup.procs"}, PrivateUsersBase: 0x60000000,
		ExtraArgs: []string{"--tmpfs=/tmp:size=1"}, ConsoleLog: "/c"}
	args := o.Args()
	if args[0] != "/bin/sh" || args[4] != "2" || args[5] != "/a/cgroup.procs" || args[6] != "/b/cgroup.procs" {
		t.Fatalf("launcher args %q", args[:7])
	}
	rest := strings.Join(args[7:], " ")
	for _, want := range []string{
		"nsenter --net=/run/netns/lt-i-0a1b2c3d systemd-nspawn",
		"--boot", "--register=no", "--keep-unit", "--machine=lt-i-0a1b2c3d", "--directory=/r",
		"--system-call-filter=~io_uring_setup io_uring_enter io_uring_register",
		"--private-users=1610612736:65536", "--private-users-ownership=off", "--tmpfs=/tmp:size=1",
	} {
		if !strings.Contains(rest, want) {
			t.Errorf("missing %q in %q", want, rest)
		}
	}
	o.PrivateUsersBase = 0
	if slices.ContainsFunc(o.Args(), func(s string) bool { return strings.HasPrefix(s, "--private-users") }) {
		t.Error("private users without a base")
	}
}

// TestLauncherScript runs the launcher's shell part with a stand-in
// command: it must write its own PID to every file, then exec.
func TestLauncherScript(t *testing.T) {
	dir := t.TempDir()
	f1, f2 := dir+"/p1", dir+"/p2"
	args := Options{ProcsFiles: []string{f1, f2}}.Args()
	// Replace everything after the files with "echo $$" via sh.
	args = append(args[:7:7], "sh", "-c", "echo exec-ok")
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "exec-ok" {
		t.Fatalf("launcher: %v %s", err, out)
	}
	b1, _ := os.ReadFile(f1)
	b2, _ := os.ReadFile(f2)
	if len(b1) == 0 || string(b1) != string(b2) {
		t.Errorf("pid files %q %q", b1, b2)
	}
}

func TestProcessAlive(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !(Process{PID: os.Getpid(), StartTime: st}).Alive() {
		t.Error("self not alive")
	}
	if (Process{PID: os.Getpid(), StartTime: st + 1}).Alive() {
		t.Error("a different start time counts as alive (PID reuse)")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if (Process{PID: cmd.Process.Pid, StartTime: 1}).Alive() {
		t.Error("exited process alive")
	}
	if (Process{}).Alive() {
		t.Error("zero process alive")
	}
}
