package image

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestEnsure builds (or reuses) the image in the shared default image
// directory, as every integration test of the provider does.
func TestEnsure(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
			t.Fatal("needs root (COMPUTE_REQUIRE_INTEGRATION=1)")
		}
		t.Skip("needs root")
	}
	dir := os.Getenv("COMPUTE_IMAGE_DIR")
	if dir == "" {
		dir = "/var/lib/compute/images"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	root, built, err := Ensure(ctx, dir, func(s string) { t.Log(s) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s built=%v in %v", root, built, time.Since(start))
	if !Ready(dir) {
		t.Fatal("not ready after Ensure")
	}
	for _, p := range []string{"etc/ssh/sshd_config.d/10-compute.conf", "etc/sudoers.d/90-compute", "usr/sbin/sshd"} {
		if _, err := os.Stat(root + "/" + p); err != nil {
			t.Error(err)
		}
	}
	if m, _ := os.ReadFile(root + "/etc/machine-id"); len(m) != 0 {
		t.Errorf("machine-id not empty: %q", m)
	}
	if keys, _ := filepathGlob(root + "/etc/ssh/ssh_host_*"); len(keys) != 0 {
		t.Errorf("baked host keys: %v", keys)
	}
	sh, _ := os.ReadFile(root + "/etc/shadow")
	if !containsLine(string(sh), DefaultUser+":!") {
		t.Errorf("user %s has no locked password", DefaultUser)
	}
}
