package encfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/compute-sdk/compute"
	"golang.org/x/sys/unix"
)

// needRoot skips t when the host cannot run the kernel-level tests, unless
// COMPUTE_REQUIRE_INTEGRATION=1 makes that a failure.
func needRoot(t testing.TB) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "needs root (loop devices, mounts, fscrypt ioctls)"
	case !exists("/dev/loop-control"):
		why = "no /dev/loop-control (CONFIG_BLK_DEV_LOOP)"
	default:
		if _, err := exec.LookPath("mkfs.ext4"); err != nil {
			why = "mkfs.ext4 not installed (e2fsprogs)"
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

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func randHex(t testing.TB) string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newKey(t testing.TB) []byte {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// assertGone checks that nothing of a volume under dir is left on the host.
func assertNothingLeft(t *testing.T, dir, mnt string) {
	t.Helper()
	if m, err := Mounted(mnt); err != nil || m {
		t.Errorf("Mounted(%s) = %v, %v; want false", mnt, m, err)
	}
	if l, err := LoopsFor(dir); err != nil || len(l) != 0 {
		t.Errorf("LoopsFor(%s) = %v, %v; want none", dir, l, err)
	}
}

// cleanupVolume makes sure a failing test does not leak mounts or loops.
func cleanupVolume(t *testing.T, image, mnt string) {
	t.Cleanup(func() {
		unix.Unmount(mnt, unix.MNT_DETACH)
		Destroy(context.Background(), image, mnt)
	})
}

func TestVolumeLifecycle(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
	cleanupVolume(t, image, mnt)
	key := newKey(t)

	v, err := Create(ctx, image, mnt, 128<<20, key)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := Mounted(mnt); err != nil || !m {
		t.Fatalf("after Create, Mounted = %v, %v", m, err)
	}
	if l, _ := LoopsFor(dir); len(l) != 1 || l[0] != v.Loop() {
		t.Fatalf("LoopsFor = %v, want [%s]", l, v.Loop())
	}
	if fi, err := os.Stat(image); err != nil || fi.Size() != 128<<20 {
		t.Fatalf("image: %v %v", fi, err)
	}

	// The data directory carries the policy we asked for.
	d, err := os.Open(v.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	pol, err := getPolicy(d)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	if pol.Contents_encryption_mode != unix.FSCRYPT_MODE_AES_256_XTS ||
		pol.Filenames_encryption_mode != unix.FSCRYPT_MODE_AES_256_CTS ||
		pol.Flags != unix.FSCRYPT_POLICY_FLAGS_PAD_32 || pol.Master_key_identifier != v.keyID {
		t.Fatalf("policy = %+v", pol)
	}

	tag := randHex(t)
	secretName, secret := "secret-name-"+tag+".txt", []byte("secret-content-"+tag)
	controlName, control := "control-name-"+tag+".txt", []byte("control-content-"+tag)
	if err := os.MkdirAll(filepath.Join(v.DataDir(), "upper", "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	secretPath := filepath.Join(v.DataDir(), "upper", "root", secretName)
	if err := os.WriteFile(secretPath, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	// Outside the encrypted directory, on the same filesystem: the grep
	// below must find this, or it proves nothing.
	if err := os.WriteFile(filepath.Join(mnt, controlName), control, 0o600); err != nil {
		t.Fatal(err)
	}

	// A file held open keeps the key in use: Close must not pretend it is
	// gone, and must succeed once the file is released.
	held, err := os.Open(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); !errors.Is(err, compute.ErrConflict) {
		t.Fatalf("Close with a file open = %v, want ErrConflict", err)
	}
	held.Close()
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
	assertNothingLeft(t, dir, mnt)

	raw, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]byte{control, []byte(controlName)} {
		if !bytes.Contains(raw, s) {
			t.Fatalf("control %q not found in the raw image: the search cannot see plaintext", s)
		}
	}
	if bytes.Contains(raw, secret) || bytes.Contains(raw, []byte(secretName)) {
		t.Fatal("plaintext of the encrypted file found in the raw image")
	}

	// Wrong key: refused, and nothing stays mounted or attached.
	if _, err := Open(ctx, image, mnt, newKey(t)); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open with a wrong key = %v, want ErrWrongKey", err)
	}
	assertNothingLeft(t, dir, mnt)

	// Even forced in, a wrong key reads nothing: names stay encrypted and
	// contents unavailable.
	loop, err := attachAndMount(image, mnt)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	wrongID, err := addKey(root, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	// data/upper/root/<secret>: every name below data is ciphertext now.
	locked := filepath.Join(mnt, dataDirName)
	for _, plain := range []string{"upper", "root", secretName} {
		ents, err := os.ReadDir(locked)
		if err != nil || len(ents) != 1 || ents[0].Name() == plain {
			t.Fatalf("locked %s lists %v, %v; want one encrypted name", locked, ents, err)
		}
		locked = filepath.Join(locked, ents[0].Name())
	}
	if _, err := os.ReadFile(locked); !errors.Is(err, unix.ENOKEY) {
		t.Fatalf("reading a locked file = %v, want ENOKEY", err)
	}
	removeKey(root, wrongID)
	root.Close()
	if err := unmountAndDetach(ctx, loop, image, mnt); err != nil {
		t.Fatal(err)
	}

	// The right key after a "reboot".
	v, err = Open(ctx, image, mnt, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(secretPath)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("after Open: %q, %v; want %q", got, err, secret)
	}
	// Open of a mounted volume returns it rather than mounting twice.
	v2, err := Open(ctx, image, mnt, key)
	if err != nil || v2.Loop() != v.Loop() {
		t.Fatalf("second Open = %v, %v", v2, err)
	}
	if l, _ := LoopsFor(dir); len(l) != 1 {
		t.Fatalf("loops after second Open: %v", l)
	}

	// Destroy while mounted, as GC does after a crash (no *Volume at hand).
	if err := Destroy(ctx, image, mnt); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, dir, mnt)
	for _, p := range []string{image, mnt} {
		if exists(p) {
			t.Errorf("%s still exists after Destroy", p)
		}
	}
	if err := Destroy(ctx, image, mnt); err != nil {
		t.Fatalf("Destroy of nothing = %v", err)
	}
}

func TestDestroyClosed(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
	cleanupVolume(t, image, mnt)
	v, err := Create(ctx, image, mnt, MinSize, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := Destroy(ctx, image, mnt); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, dir, mnt)
	if exists(image) || exists(mnt) {
		t.Fatal("image or mount point left")
	}
}

func TestCreateFailsCleanly(t *testing.T) {
	needRoot(t)
	ctx := context.Background()

	t.Run("mount point is a file", func(t *testing.T) {
		dir := t.TempDir()
		image, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
		cleanupVolume(t, image, mnt)
		if err := os.WriteFile(mnt, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Create(ctx, image, mnt, MinSize, newKey(t)); err == nil {
			t.Fatal("Create succeeded")
		}
		assertNothingLeft(t, dir, mnt)
		if exists(image) {
			t.Fatal("image left behind")
		}
	})
	t.Run("image exists", func(t *testing.T) {
		dir := t.TempDir()
		image, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
		if err := os.WriteFile(image, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Create(ctx, image, mnt, MinSize, newKey(t)); !errors.Is(err, compute.ErrConflict) {
			t.Fatalf("err = %v, want ErrConflict", err)
		}
		if b, _ := os.ReadFile(image); string(b) != "keep me" {
			t.Fatal("existing image was modified")
		}
		if exists(mnt) {
			t.Fatal("mount point created")
		}
	})
	t.Run("mount point in use", func(t *testing.T) {
		dir := t.TempDir()
		image, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
		os.Mkdir(mnt, 0o700)
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(mnt, 0)
		if _, err := Create(ctx, image, mnt, MinSize, newKey(t)); !errors.Is(err, compute.ErrConflict) {
			t.Fatalf("err = %v, want ErrConflict", err)
		}
		if exists(image) {
			t.Fatal("image created")
		}
	})
	t.Run("bad input", func(t *testing.T) {
		dir := t.TempDir()
		for _, tc := range []struct {
			size int64
			key  []byte
		}{{MinSize, make([]byte, 32)}, {1 << 20, newKey(t)}} {
			_, err := Create(ctx, filepath.Join(dir, "x.img"), filepath.Join(dir, "m"), tc.size, tc.key)
			if !errors.Is(err, compute.ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("bad input left %v", ents)
		}
	})
}

func TestOpenMissing(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(context.Background(), filepath.Join(dir, "none.img"), filepath.Join(dir, "m"), make([]byte, KeySize))
	if !errors.Is(err, compute.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:          "/a/b",
		`/a\040b`:       "/a b",
		`/x\134y`:       `/x\y`,
		`/t\011\012`:    "/t\t\n",
		`/bad\04`:       `/bad\04`,
		`/not\999octal`: `/not\999octal`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkCreate compares creating an encrypted volume with making and
// mounting a plain ext4 filesystem of the same (sparse) size, so the cost
// of encryption setup is visible next to its baseline.
func BenchmarkCreate(b *testing.B) {
	needRoot(b)
	ctx := context.Background()
	const size = 1 << 30
	b.Run("encrypted", func(b *testing.B) {
		dir := b.TempDir()
		key := newKey(b)
		i := 0
		for b.Loop() {
			i++
			image, mnt := filepath.Join(dir, "d.img"), filepath.Join(dir, "m")
			v, err := Create(ctx, image, mnt, size, key)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := v.Close(ctx); err != nil {
				b.Fatal(err)
			}
			if err := Destroy(ctx, image, mnt); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("plain", func(b *testing.B) {
		dir := b.TempDir()
		for b.Loop() {
			image, mnt := filepath.Join(dir, "d.img"), filepath.Join(dir, "m")
			f, err := os.Create(image)
			if err != nil {
				b.Fatal(err)
			}
			f.Truncate(size)
			f.Close()
			if err := mkfs(ctx, image, false); err != nil {
				b.Fatal(err)
			}
			os.Mkdir(mnt, 0o700)
			loop, err := attachAndMount(image, mnt)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := unmountAndDetach(ctx, loop, image, mnt); err != nil {
				b.Fatal(err)
			}
			os.Remove(image)
			os.Remove(mnt)
			b.StartTimer()
		}
	})
}
