package cgroups

import (
	"errors"
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

// TestNspawnLauncher checks pitfall A end to end: a launcher that moves
// itself into the group before exec'ing systemd-nspawn --keep-unit gets
// nspawn's payload/ and supervisor/ split below the instance's own group,
// the payload inherits the v1 limits, and Remove cleans up after it exits.
// The container runs `sleep` from the host's /usr, so no image is needed.
func TestNspawnLauncher(t *testing.T) {
	needRoot(t, Unified, Systemd, PIDs)
	nspawn, err := exec.LookPath("systemd-nspawn")
	if err != nil {
		if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
			t.Fatal("systemd-nspawn not installed (apt-get install systemd-container)")
		}
		t.Skip("systemd-nspawn not installed (apt-get install systemd-container)")
	}
	tree := t.TempDir()
	for _, d := range []string{"usr", "etc"} {
		if err := os.Mkdir(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		os.Symlink("usr/"+l, filepath.Join(tree, l))
	}
	osr, err := os.ReadFile("/usr/lib/os-release")
	if err != nil {
		t.Skip("no /usr/lib/os-release to make a minimal OS tree")
	}
	os.WriteFile(filepath.Join(tree, "etc", "os-release"), osr, 0o644)

	prefix := testPrefix(t)
	g, err := Create(prefix, "n1", Limits{PIDs: 50})
	if err != nil {
		t.Fatal(err)
	}
	machine := prefix + "-n1"
	cmd := startIn(t, g, nspawn+" --quiet --register=no --keep-unit -M "+machine+" -D "+tree+
		" --bind-ro=/usr /usr/bin/sleep 300")

	// Find the container's sleep: a process in the group other than nspawn.
	var payload int
	deadline := time.Now().Add(10 * time.Second)
	for payload == 0 {
		pids, _ := g.Pids()
		for _, pid := range pids {
			if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); strings.TrimSpace(string(b)) == "sleep" {
				payload = pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no payload process appeared in the group (pids %v)", pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(payload) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"::/" + prefix + "/n1/payload",
		":name=systemd:/" + prefix + "/n1/payload",
		":pids:/" + prefix + "/n1\n",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("payload /proc/%d/cgroup lacks %q:\n%s", payload, want, b)
		}
	}
	for _, h := range []string{Unified, Systemd} {
		for _, sub := range []string{"payload", "supervisor"} {
			if _, err := os.Stat(filepath.Join(g.Path(h), sub)); err != nil {
				t.Errorf("nspawn did not split the instance group in %s: %v", h, err)
			}
		}
	}
	// Nothing at the hierarchy roots: that is what pitfall A looked like.
	for _, h := range []string{Unified, Systemd} {
		if _, err := os.Stat(filepath.Join(host().mounts[h], "payload")); err == nil {
			t.Logf("warning: %s/payload exists at the root (another launcher without its own group?)", host().mounts[h])
		}
	}

	if err := g.Remove(); !errors.Is(err, compute.ErrConflict) {
		t.Fatalf("Remove with a running container = %v, want ErrConflict", err)
	}
	// Stop the container as the provider does: SIGTERM to nspawn, by PID.
	syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("nspawn did not exit on SIGTERM")
	}
	// payload/ and supervisor/ stay behind; Remove takes them.
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, p := range g.Paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
}
