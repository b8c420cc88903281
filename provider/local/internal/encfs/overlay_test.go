package encfs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/compute-sdk/compute"
	"golang.org/x/sys/unix"
)

// TestOverlayUpperInDataDir is the provider's use: an instance root is an
// overlay whose lower is the shared plaintext image and whose upper and
// work dirs live in the encrypted DataDir.
func TestOverlayUpperInDataDir(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
	cleanupVolume(t, image, mnt)
	lower, merged := filepath.Join(dir, "lower"), filepath.Join(dir, "merged")
	for _, d := range []string{filepath.Join(lower, "etc"), filepath.Join(lower, "root"), merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "etc", "motd"), []byte("image motd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	v, err := Create(ctx, image, mnt, 64<<20, key)
	if err != nil {
		t.Fatal(err)
	}
	upper, work := filepath.Join(v.DataDir(), "upper"), filepath.Join(v.DataDir(), "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(merged, unix.MNT_DETACH) })

	tag := randHex(t)
	inside, insideName := []byte("written-inside-"+tag), "inside-"+tag+".txt"
	if err := os.WriteFile(filepath.Join(merged, "root", insideName), inside, 0o600); err != nil {
		t.Fatal(err)
	}
	// Copy-up of a lower file lands in the encrypted upper too.
	motd := []byte("changed motd " + tag + "\n")
	if err := os.WriteFile(filepath.Join(merged, "etc", "motd"), motd, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(lower, "etc", "motd")); string(b) != "image motd\n" {
		t.Fatalf("lower changed: %q", b)
	}

	// While the overlay is mounted its dentries keep the key in use: Close
	// must refuse and keep the volume mounted rather than unmount it and
	// leave the filesystem alive behind the overlay.
	if err := v.Close(ctx); !errors.Is(err, compute.ErrConflict) {
		t.Fatalf("Close under a mounted overlay = %v, want ErrConflict", err)
	}
	if m, _ := Mounted(mnt); !m {
		t.Fatal("volume unmounted although the overlay still uses it")
	}
	if st := status(t, mnt, v.keyID); st != unix.FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED {
		t.Fatalf("key status after a refused Close = %d, want incompletely removed (3)", st)
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, dir, mnt)

	raw, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]byte{inside, []byte(insideName), motd, []byte(tag)} {
		if bytes.Contains(raw, s) {
			t.Fatalf("%q found in the raw image", s)
		}
	}

	// After a restart the instance's files come back through a new overlay.
	v, err = Open(ctx, image, mnt, key)
	if err != nil {
		t.Fatal(err)
	}
	if st := status(t, mnt, v.keyID); st != unix.FSCRYPT_KEY_STATUS_PRESENT {
		t.Fatalf("key status after Open = %d, want present (2)", st)
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string][]byte{
		filepath.Join(merged, "root", insideName): inside,
		filepath.Join(merged, "etc", "motd"):      motd,
	} {
		if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	// GC after a crash may find the overlay still up: Destroy must not
	// unmount the volume from under it either.
	if err := Destroy(ctx, image, mnt); !errors.Is(err, compute.ErrConflict) {
		t.Fatalf("Destroy under a mounted overlay = %v, want ErrConflict", err)
	}
	if m, _ := Mounted(mnt); !m || !exists(image) {
		t.Fatal("refused Destroy still unmounted or deleted the volume")
	}
	if err := unix.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	if err := Destroy(ctx, image, mnt); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, dir, mnt)
	if exists(image) {
		t.Fatal("image left")
	}
}

func status(t *testing.T, mnt string, id keyID) uint32 {
	t.Helper()
	root, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	st, err := keyStatus(root, id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
