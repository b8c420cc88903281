// Package image builds and caches the local provider's golden root
// filesystem: Debian bookworm (debootstrap minbase) with systemd, OpenSSH and
// sudo, prepared so that every instance booted from it gets its own identity
// (no baked host keys, an empty machine-id) and a hardened sshd.
//
// The image is built into a temporary directory next to its final place and
// renamed into place when complete, under a file lock, so concurrent callers
// (in one or several processes) build it once and never see half an image.
package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
)

// Name is the name of the only image for now.
const Name = "bookworm"

// Suite is the Debian release the image is built from.
const Suite = "bookworm"

// Packages are installed on top of debootstrap's minbase variant.
var Packages = []string{"systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "ca-certificates", "sudo"}

// hardeningVersion changes whenever prepare changes what it writes, so that
// cached images built by an older version are rebuilt.
const hardeningVersion = "3"

// DefaultMirror is used when the host's apt sources name no Debian mirror.
const DefaultMirror = "http://deb.debian.org/debian"

// DefaultUser is the unprivileged sudo user every image has.
const DefaultUser = "compute"

// SSHDConfig is the sshd drop-in baked into the image: key-only login, root by
// key only, and only modern key exchange, ciphers, MACs and host keys.
const SSHDConfig = `# Written by compute: key-only login with modern algorithms only.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PubkeyAuthentication yes
PermitEmptyPasswords no
KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org
Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com
MACs hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com
HostKey /etc/ssh/ssh_host_ed25519_key
HostKeyAlgorithms ssh-ed25519
PubkeyAcceptedAlgorithms ssh-ed25519,sk-ssh-ed25519@openssh.com,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256
`

// stamp is what a complete image records about how it was built; a cached
// image is reused only if its stamp equals the current one.
func stamp() string {
	return fmt.Sprintf("suite=%s\npackages=%s\nhardening=%s\n", Suite, strings.Join(Packages, ","), hardeningVersion)
}

// RootFS returns the root filesystem directory of the image in dir.
func RootFS(dir string) string { return filepath.Join(dir, Name, "rootfs") }

func stampFile(dir string) string { return filepath.Join(dir, Name, "stamp") }

// Ready reports whether a complete, current image exists in dir.
func Ready(dir string) bool {
	b, err := os.ReadFile(stampFile(dir))
	if err != nil || string(b) != stamp() {
		return false
	}
	fi, err := os.Stat(filepath.Join(RootFS(dir), "usr/lib/systemd/systemd"))
	return err == nil && fi.Mode().IsRegular()
}

// Ensure returns the image's root filesystem, building it first if dir holds
// no current image. built reports whether it was built by this call.
func Ensure(ctx context.Context, dir string, progress func(step string)) (rootfs string, built bool, err error) {
	if Ready(dir) {
		return RootFS(dir), false, nil
	}
	unlock, err := lock(ctx, dir)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if Ready(dir) { // built by someone else while we waited
		return RootFS(dir), false, nil
	}
	if err := build(ctx, dir, progress); err != nil {
		return "", false, err
	}
	return RootFS(dir), true, nil
}

// Build (re)builds the image in dir even if a current one exists. Running
// instances keep using the previous root filesystem, which stays on disk
// (renamed) until no mount refers to it.
func Build(ctx context.Context, dir string, progress func(step string)) (string, error) {
	unlock, err := lock(ctx, dir)
	if err != nil {
		return "", err
	}
	defer unlock()
	if err := build(ctx, dir, progress); err != nil {
		return "", err
	}
	return RootFS(dir), nil
}

// lock takes an exclusive flock on dir/<Name>.lock, waiting (polling, so ctx
// is honoured) while another builder holds it.
func lock(ctx context.Context, dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, Name+".lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("image: lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func build(ctx context.Context, dir string, progress func(string)) (err error) {
	if progress == nil {
		progress = func(string) {}
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("image: debootstrap not found (apt-get install debootstrap): %w", compute.ErrPrecondition)
	}
	base := filepath.Join(dir, Name)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	removeStale(base)
	tmp, err := os.MkdirTemp(base, ".build-")
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	root := filepath.Join(tmp, "rootfs")
	mirror := Mirror()
	progress("debootstrap " + Suite + " from " + mirror)
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase",
		"--include="+strings.Join(Packages, ","), Suite, root, mirror)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("image: debootstrap: %w\n%s", err, tail(out.String(), 2000))
	}
	progress("prepare image")
	if err := prepare(ctx, root); err != nil {
		return err
	}
	progress("install image")
	final := RootFS(dir)
	// Retire the old root filesystem first: instances booted from it keep
	// their mounts of it, and a later build removes it once unused.
	if _, err := os.Lstat(final); err == nil {
		if err := os.Remove(stampFile(dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("image: %w", err)
		}
		if err := os.Rename(final, filepath.Join(base, fmt.Sprintf(".old-%d", time.Now().UnixNano()))); err != nil {
			return fmt.Errorf("image: retire old rootfs: %w", err)
		}
	}
	if err := os.Rename(root, final); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	os.Remove(tmp)
	if err := writeAtomic(stampFile(dir), []byte(stamp()), 0o644); err != nil {
		return err
	}
	removeStale(base)
	return nil
}

// removeStale deletes unfinished builds and retired root filesystems that no
// mount refers to any more.
func removeStale(base string) {
	ents, err := os.ReadDir(base)
	if err != nil {
		return
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".old-") && !strings.HasPrefix(e.Name(), ".build-") {
			continue
		}
		p := filepath.Join(base, e.Name())
		if bytes.Contains(mi, []byte(p)) {
			continue
		}
		// Callers hold the build lock, so a .build- directory is the
		// leftover of a crashed build.
		os.RemoveAll(p)
	}
}

// Mirror returns the Debian mirror of the host's apt sources, or
// DefaultMirror.
func Mirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "URIs:"); ok {
				for _, u := range strings.Fields(v) {
					if strings.HasSuffix(strings.TrimSuffix(u, "/"), "/debian") {
						return strings.TrimSuffix(u, "/")
					}
				}
			}
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "deb" && strings.HasSuffix(strings.TrimSuffix(f[1], "/"), "/debian") {
				return strings.TrimSuffix(f[1], "/")
			}
		}
	}
	return DefaultMirror
}

// prepare turns a fresh debootstrap tree into the golden image.
func prepare(ctx context.Context, root string) error {
	// Host keys generated by the openssh-server postinst would be shared by
	// every instance: remove them. Each instance gets its own ed25519 key.
	keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return fmt.Errorf("image: %w", err)
		}
	}
	// An empty machine-id makes systemd generate one per boot (per instance).
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	os.Remove(filepath.Join(root, "var/lib/dbus/machine-id"))
	for _, g := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"} {
		m, _ := filepath.Glob(filepath.Join(root, g))
		for _, p := range m {
			if fi, err := os.Lstat(p); err == nil && !fi.IsDir() {
				os.Remove(p)
			}
		}
	}
	files := []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"etc/ssh/sshd_config.d/10-compute.conf", 0o644, SSHDConfig},
		{"etc/sudoers.d/90-compute", 0o440, DefaultUser + " ALL=(ALL) NOPASSWD:ALL\n"},
		// Nothing inside configures the network: the provider sets eth0 up
		// in the instance's namespace before boot.
		{"etc/hostname", 0o644, "localhost\n"},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("image: %w", err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("image: %w", err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			return fmt.Errorf("image: %w", err)
		}
	}
	// The default sudo user: password locked ('!' in shadow, useradd's
	// default), so only its authorized_keys lets anyone in.
	cmd := exec.CommandContext(ctx, "chroot", root, "useradd", "--create-home", "--shell", "/bin/bash",
		"--groups", "sudo", "--user-group", DefaultUser)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("image: useradd %s: %w: %s", DefaultUser, err, out)
	}
	if out, err := exec.CommandContext(ctx, "chroot", root, "passwd", "--lock", DefaultUser).CombinedOutput(); err != nil {
		return fmt.Errorf("image: passwd --lock: %w: %s", err, out)
	}
	// Units that make no sense in a container, or that would wait for
	// things the provider does instead, are masked: they would otherwise
	// leave the system "degraded" or slow the boot.
	for _, u := range []string{"systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service"} {
		l := filepath.Join(root, "etc/systemd/system", u)
		os.Remove(l)
		if err := os.Symlink("/dev/null", l); err != nil {
			return fmt.Errorf("image: mask %s: %w", u, err)
		}
	}
	return nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
