// Package encfs keeps an instance's writable state encrypted at rest: an
// ext4 filesystem with the encrypt feature in a sparse image file, attached
// through a loop device, whose data directory carries an fscrypt v2 policy
// (AES-256-XTS contents, AES-256-CTS names) keyed by a random 512-bit
// per-instance key. Removing the key and deleting the image is a
// crypto-erase.
//
// Everything here talks to the kernel directly (loop and fscrypt ioctls from
// golang.org/x/sys/unix); only mkfs.ext4 (e2fsprogs) is run as a program.
// All functions need root.
package encfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/compute-sdk/compute"
	"golang.org/x/sys/unix"
)

// KeySize is the size of an instance key: fscrypt v2 policies with
// AES-256-XTS take a 512-bit master key.
const KeySize = 64

// MasterKeySize is the size of the provider master key (AES-256).
const MasterKeySize = 32

// MinSize is the smallest volume Create accepts: ext4 needs room for its
// journal and metadata.
const MinSize = 32 << 20

// dataDirName is the encrypted directory at the root of each volume.
const dataDirName = "data"

// ErrWrongKey is returned by Open when the key does not match the one the
// volume's data directory was encrypted with.
var ErrWrongKey = errors.New("encfs: key does not match the volume")

// Volume is an attached, mounted and unlocked encrypted volume.
type Volume struct {
	image      string
	mountPoint string
	loop       string // /dev/loopN
	keyID      keyID  // fscrypt identifier of the added key
}

// Create makes a new encrypted volume: a sparse image file of size bytes at
// image, formatted as ext4 with the encrypt feature, attached to a free loop
// device (autoclear, so unmounting detaches it even after a crash), mounted
// at mountPoint (created 0700 if missing), with key added to the filesystem
// keyring and an empty encrypted data directory (see DataDir). image must
// not exist. On any error everything done so far is undone.
func Create(ctx context.Context, image, mountPoint string, size int64, key []byte) (_ *Volume, err error) {
	if len(key) != KeySize {
		return nil, compute.InvalidField("key", "", fmt.Sprintf("%d bytes, want %d", len(key), KeySize))
	}
	if size < MinSize {
		return nil, compute.InvalidField("size", strconv.FormatInt(size, 10), fmt.Sprintf("below the minimum of %d bytes", MinSize))
	}
	image, mountPoint, err = absPaths(image, mountPoint)
	if err != nil {
		return nil, err
	}
	if _, mounted, err := mountSource(mountPoint); err != nil || mounted {
		if err == nil {
			err = fmt.Errorf("encfs: something is already mounted on %s: %w", mountPoint, compute.ErrConflict)
		}
		return nil, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	f, err := os.OpenFile(image, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("encfs: create %s: %w", image, compute.ErrConflict)
		}
		return nil, fmt.Errorf("encfs: %w", err)
	}
	undo = append(undo, func() { os.Remove(image) })
	err = f.Truncate(size) // sparse: blocks are allocated as they are written
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	if err := mkfs(ctx, image, true); err != nil {
		return nil, err
	}

	created, err := mkdirMountPoint(mountPoint)
	if err != nil {
		return nil, err
	}
	if created {
		undo = append(undo, func() { os.Remove(mountPoint) })
	}
	loop, err := attachAndMount(image, mountPoint)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { unmountAndDetach(context.Background(), loop, image, mountPoint) })

	root, err := os.Open(mountPoint)
	if err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	defer root.Close()
	id, err := addKey(root, key)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		if r, err := os.Open(mountPoint); err == nil {
			removeKey(r, id)
			r.Close()
		}
	})
	dataPath := filepath.Join(mountPoint, dataDirName)
	if err := os.Mkdir(dataPath, 0o700); err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	data, err := os.Open(dataPath)
	if err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	defer data.Close()
	if err := setPolicy(data, id); err != nil {
		return nil, err
	}
	return &Volume{image: image, mountPoint: mountPoint, loop: loop, keyID: id}, nil
}

// Open attaches, mounts and unlocks an existing volume created by Create,
// e.g. after the instance was stopped or the host rebooted. If key is not
// the volume's key it returns an error wrapping ErrWrongKey and leaves
// nothing mounted or attached. If the volume is already mounted at
// mountPoint, Open adds the key again (harmless if present) and returns it.
func Open(ctx context.Context, image, mountPoint string, key []byte) (_ *Volume, err error) {
	if len(key) != KeySize {
		return nil, compute.InvalidField("key", "", fmt.Sprintf("%d bytes, want %d", len(key), KeySize))
	}
	image, mountPoint, err = absPaths(image, mountPoint)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(image); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("encfs: image %s: %w", image, compute.ErrNotFound)
		}
		return nil, fmt.Errorf("encfs: %w", err)
	}
	loop, mounted, err := mountedImage(image, mountPoint)
	if err != nil {
		return nil, err
	}
	if !mounted {
		if _, err := mkdirMountPoint(mountPoint); err != nil {
			return nil, err
		}
		if loop, err = attachAndMount(image, mountPoint); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				unmountAndDetach(context.Background(), loop, image, mountPoint)
			}
		}()
	}

	root, err := os.Open(mountPoint)
	if err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	defer root.Close()
	data, err := os.Open(filepath.Join(mountPoint, dataDirName))
	if err != nil {
		return nil, fmt.Errorf("encfs: %s has no data directory: %w", image, err)
	}
	defer data.Close()
	// The policy names the identifier of the right key, and reading it needs
	// no key. Check before adding, so a wrong key never lands in the keyring.
	pol, err := getPolicy(data)
	if err != nil {
		return nil, err
	}
	id, err := addKey(root, key)
	if err != nil {
		return nil, err
	}
	if id != pol.Master_key_identifier {
		removeKey(root, id)
		return nil, fmt.Errorf("encfs: open %s: %w", image, ErrWrongKey)
	}
	return &Volume{image: image, mountPoint: mountPoint, loop: loop, keyID: id}, nil
}

// Image returns the path of the backing image file.
func (v *Volume) Image() string { return v.image }

// MountPoint returns where the volume's filesystem is mounted.
func (v *Volume) MountPoint() string { return v.mountPoint }

// Loop returns the loop device the image is attached to (/dev/loopN).
func (v *Volume) Loop() string { return v.loop }

// DataDir returns the encrypted directory: put an instance's overlay upper
// and work directories and its data there. Only files below it are
// encrypted; the rest of the filesystem is plaintext ext4 metadata.
func (v *Volume) DataDir() string { return filepath.Join(v.mountPoint, dataDirName) }

// Close removes the key from the filesystem keyring, unmounts the volume
// and waits until the autoclear loop device has detached. It is idempotent:
// closing a closed volume returns nil.
//
// Overlays whose upper dir lives in DataDir must be unmounted first: their
// files keep the key in use ("incompletely removed") and keep the filesystem
// alive after its own unmount. The key is destroyed with the filesystem's
// superblock, so a successful Close means the key is gone; if something
// (an overlay, or a copy of the mount in another mount namespace) still
// holds the filesystem, Close reports an error wrapping compute.ErrConflict
// and a later Close or Destroy can finish the job.
func (v *Volume) Close(ctx context.Context) error {
	src, mounted, err := mountSource(v.mountPoint)
	if err != nil {
		return err
	}
	if mounted && src != v.loop {
		return fmt.Errorf("encfs: %s is mounted from %s, not %s: %w", v.mountPoint, src, v.loop, compute.ErrConflict)
	}
	if mounted {
		root, err := os.Open(v.mountPoint)
		if err != nil {
			return fmt.Errorf("encfs: %w", err)
		}
		busy, err := removeKey(root, v.keyID)
		if err == nil && busy {
			// Dirty pages of files written just now can hold inodes; flush
			// and ask again before reporting files still in use.
			unix.Syncfs(int(root.Fd()))
			busy, err = removeKey(root, v.keyID)
		}
		root.Close()
		if err != nil {
			return err
		}
		if busy {
			// Unmounting now could succeed while an overlay keeps the
			// filesystem (and the key) alive out of sight. Stay mounted so
			// a retry can finish the removal here.
			return fmt.Errorf("encfs: %s: key incompletely removed, files still in use (unmount overlays on %s first): %w",
				v.image, v.DataDir(), compute.ErrConflict)
		}
	}
	return unmountAndDetach(ctx, v.loop, v.image, v.mountPoint)
}

// Destroy crypto-erases a volume: if it is mounted at mountPoint its key is
// removed and it is unmounted, any loop device still backed by image is
// detached, and the image file and the (empty) mount point are deleted. It
// works when nothing is mounted and when the image is already gone (then it
// returns nil). If the filesystem is still held elsewhere, it returns an
// error wrapping compute.ErrConflict and keeps the image for a later retry.
func Destroy(ctx context.Context, image, mountPoint string) error {
	image, mountPoint, err := absPaths(image, mountPoint)
	if err != nil {
		return err
	}
	src, mounted, err := mountSource(mountPoint)
	if err != nil {
		return err
	}
	if mounted {
		b, err := loopBacking(filepath.Base(src))
		if err != nil {
			return fmt.Errorf("encfs: %w", err)
		}
		if b != image {
			return fmt.Errorf("encfs: %s is mounted from %s, not from %s: %w", mountPoint, src, image, compute.ErrConflict)
		}
		busy, err := removeKeyFromPolicy(mountPoint)
		if err != nil {
			return err
		}
		if busy {
			return fmt.Errorf("encfs: destroy %s: key incompletely removed, files still in use (unmount overlays on %s first): %w",
				image, filepath.Join(mountPoint, dataDirName), compute.ErrConflict)
		}
		if err := unmountAndDetach(ctx, src, image, mountPoint); err != nil {
			return err
		}
	}
	loops, err := loopsForFile(image)
	if err != nil {
		return err
	}
	for _, l := range loops {
		if err := detachLoop(l); err != nil {
			return err
		}
		if err := waitDetached(ctx, l, image); err != nil {
			return err
		}
	}
	if err := os.Remove(image); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("encfs: %w", err)
	}
	if err := os.Remove(mountPoint); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("encfs: remove mount point: %w", err)
	}
	return nil
}

// removeKeyFromPolicy removes the key named by the data directory's policy,
// which Destroy can find without knowing the key. busy is as for removeKey.
func removeKeyFromPolicy(mountPoint string) (busy bool, err error) {
	data, err := os.Open(filepath.Join(mountPoint, dataDirName))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // never got as far as a policy
	}
	if err != nil {
		return false, fmt.Errorf("encfs: %w", err)
	}
	pol, err := getPolicy(data)
	// The data directory is itself an encrypted inode: holding it open
	// would make the key look busy. Remove through the plaintext root.
	data.Close()
	if errors.Is(err, unix.ENODATA) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	root, err := os.Open(mountPoint)
	if err != nil {
		return false, fmt.Errorf("encfs: %w", err)
	}
	defer root.Close()
	busy, err = removeKey(root, pol.Master_key_identifier)
	if err == nil && busy {
		unix.Syncfs(int(root.Fd()))
		busy, err = removeKey(root, pol.Master_key_identifier)
	}
	return busy, err
}

// Mounted reports whether a filesystem is mounted exactly at mountPoint.
func Mounted(mountPoint string) (bool, error) {
	mountPoint, err := realPath(mountPoint)
	if err != nil {
		return false, err
	}
	_, ok, err := mountSource(mountPoint)
	return ok, err
}

func absPaths(image, mountPoint string) (string, string, error) {
	if image == "" {
		return "", "", compute.InvalidField("image", image, "empty path")
	}
	if mountPoint == "" {
		return "", "", compute.InvalidField("mountPoint", mountPoint, "empty path")
	}
	i, err := realPath(image)
	if err != nil {
		return "", "", err
	}
	m, err := realPath(mountPoint)
	if err != nil {
		return "", "", err
	}
	return i, m, nil
}

// realPath makes p absolute and resolves symlinks in its parent, the way
// the kernel reports paths in mountinfo and in a loop device's backing_file,
// so comparisons with those hold when the state root is a symlink.
func realPath(p string) (string, error) {
	p, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r, nil
	}
	if d, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
		p = filepath.Join(d, filepath.Base(p))
	}
	return p, nil
}

// mkfs formats image as ext4. The block size is pinned to 4096 because
// ext4 picks 1024 for small filesystems and older kernels only support
// fscrypt when the block size equals the page size. No blocks are reserved
// for root: the volume holds one instance's data.
func mkfs(ctx context.Context, image string, encrypt bool) error {
	args := []string{"-q", "-F", "-b", "4096", "-m", "0"}
	if encrypt {
		args = append(args, "-O", "encrypt")
	}
	args = append(args, image)
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("encfs: mkfs.ext4 not found (apt-get install e2fsprogs): %w", compute.ErrPrecondition)
		}
		return fmt.Errorf("encfs: mkfs.ext4 %s: %w: %s", image, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

func mkdirMountPoint(p string) (created bool, err error) {
	err = os.Mkdir(p, 0o700)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		err = os.MkdirAll(p, 0o700)
	}
	if err != nil {
		return false, fmt.Errorf("encfs: mount point: %w", err)
	}
	return true, nil
}

// attachAndMount attaches image to a loop device and mounts it. The loop
// descriptor is closed only after the mount holds the device, so autoclear
// does not detach it in between; if the mount fails, closing it detaches.
func attachAndMount(image, mountPoint string) (string, error) {
	loop, f, err := attachLoop(image)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// nosuid and nodev on the host-side mount only: an overlay on top
	// checks its own mount's flags, so setuid binaries copied up into an
	// instance's upper dir still work inside the instance (verified), but
	// not through this path on the host.
	if err := unix.Mount(loop, mountPoint, "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, ""); err != nil {
		return "", fmt.Errorf("encfs: mount %s (%s) on %s: %w", loop, image, mountPoint, err)
	}
	return loop, nil
}

// unmountAndDetach unmounts mountPoint if it is mounted, then waits until
// loop no longer serves image.
func unmountAndDetach(ctx context.Context, loop, image, mountPoint string) error {
	if err := unix.Unmount(mountPoint, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("encfs: unmount %s: files in use: %w", mountPoint, compute.ErrConflict)
		}
		return fmt.Errorf("encfs: unmount %s: %w", mountPoint, err)
	}
	if loop == "" {
		return nil
	}
	return waitDetached(ctx, loop, image)
}

// waitDetached waits for the kernel's autoclear to detach loop from image.
// Detaching can lag the unmount slightly; if it does not happen, something
// else still holds the filesystem open.
func waitDetached(ctx context.Context, loop, image string) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		b, err := loopBacking(filepath.Base(loop))
		if err != nil {
			return fmt.Errorf("encfs: %w", err)
		}
		if b != image {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("encfs: %s still attached to %s after unmount (filesystem held by an overlay or another mount namespace?): %w",
				loop, image, compute.ErrConflict)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// loopsForFile returns the loop devices backed by exactly file.
func loopsForFile(file string) ([]string, error) {
	all, err := LoopsFor(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range all {
		if b, _ := loopBacking(filepath.Base(l)); b == file {
			out = append(out, l)
		}
	}
	return out, nil
}

// mountedImage reports whether mountPoint is a mount of image through a loop
// device, and which. A mount of something else is a conflict.
func mountedImage(image, mountPoint string) (loop string, ok bool, err error) {
	src, mounted, err := mountSource(mountPoint)
	if err != nil || !mounted {
		return "", false, err
	}
	b, err := loopBacking(filepath.Base(src))
	if err != nil {
		return "", false, fmt.Errorf("encfs: %w", err)
	}
	if b != image {
		return "", false, fmt.Errorf("encfs: %s is mounted from %s, not from %s: %w", mountPoint, src, image, compute.ErrConflict)
	}
	return src, true, nil
}
