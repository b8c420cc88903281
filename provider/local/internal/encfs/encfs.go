// Package encfs keeps an instance's writable state encrypted at rest: an
// ext4 filesystem with the encrypt feature in a sparse image file, attached
// through a loop device, whose data directory carries an fscrypt v2 policy
// (AES-256-XTS contents, AES-256-CTS names) keyed by a random 512-bit
// per-instance key. Destroying the key and the image is a crypto-erase.
//
// Everything here talks to the kernel directly (loop and fscrypt ioctls from
// golang.org/x/sys/unix); only mkfs.ext4 (e2fsprogs) is run as a program.
// All functions need root.
package encfs

import (
	"context"
	"errors"
)

// KeySize is the size of an instance key: fscrypt v2 policies with
// AES-256-XTS take a 512-bit master key.
const KeySize = 64

// MasterKeySize is the size of the provider master key (AES-256).
const MasterKeySize = 32

// dataDirName is the encrypted directory at the root of each volume.
const dataDirName = "data"

// ErrWrongKey is returned by Open when the key does not match the one the
// volume's data directory was encrypted with.
var ErrWrongKey = errors.New("encfs: key does not match the volume")

var errTODO = errors.New("encfs: not implemented yet")

// NewKey returns a fresh random instance key of KeySize bytes.
func NewKey() ([]byte, error) { return nil, errTODO }

// LoadOrCreateMasterKey reads the MasterKeySize-byte master key at path,
// creating it (directory 0700, file 0600, written atomically) if it does not
// exist. A key file that is readable or writable by group or others, that is
// not a regular file, or that has the wrong size is refused with an error
// wrapping compute.ErrPrecondition: silently using a leaked or truncated key
// would defeat encryption at rest.
func LoadOrCreateMasterKey(path string) ([]byte, error) { return nil, errTODO }

// Wrap seals key with master using AES-256-GCM and a random nonce. aad (the
// instance ID) is bound into the ciphertext, so a wrapped key copied to
// another instance's record does not unwrap. The result is nonce||ciphertext.
func Wrap(master, key []byte, aad string) ([]byte, error) { return nil, errTODO }

// Unwrap reverses Wrap. It fails if master, aad or the wrapped bytes differ
// from those used by Wrap.
func Unwrap(master, wrapped []byte, aad string) ([]byte, error) { return nil, errTODO }

// Volume is an attached, mounted and unlocked encrypted volume.
type Volume struct {
	image      string
	mountPoint string
	loop       string   // /dev/loopN
	keyID      [16]byte // fscrypt key identifier of the added key
}

// Create makes a new encrypted volume: a sparse image file of size bytes at
// image, formatted as ext4 with the encrypt feature, attached to a free loop
// device (autoclear, so unmounting detaches it even after a crash), mounted
// at mountPoint (created if missing), with key added to the filesystem
// keyring and an empty encrypted data directory (see DataDir). image must
// not exist. On any error everything done so far is undone.
func Create(ctx context.Context, image, mountPoint string, size int64, key []byte) (*Volume, error) {
	return nil, errTODO
}

// Open attaches, mounts and unlocks an existing volume created by Create,
// e.g. after the instance was stopped or the host rebooted. It returns an
// error wrapping ErrWrongKey, with nothing left mounted, if key is not the
// volume's key. Opening a volume that is already mounted at mountPoint
// adds the key again (a no-op if present) and returns it.
func Open(ctx context.Context, image, mountPoint string, key []byte) (*Volume, error) {
	return nil, errTODO
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
func (v *Volume) DataDir() string { return "" }

// Close removes the key from the filesystem keyring, unmounts the volume
// (which detaches the autoclear loop device) and removes the key again if
// the first removal was incomplete because files were still in use. It is
// idempotent: closing a closed volume returns nil. Overlays whose upper dir
// lives in DataDir must be unmounted first, or Close fails with EBUSY.
func (v *Volume) Close(ctx context.Context) error { return errTODO }

// Destroy crypto-erases a volume: if it is mounted at mountPoint its key is
// removed and it is unmounted, any loop device still backed by image is
// detached, and the image file is deleted. It works when nothing is mounted
// and when the image is already gone (then it returns nil).
func Destroy(ctx context.Context, image, mountPoint string) error { return errTODO }

// Mounted reports whether a filesystem is mounted exactly at mountPoint.
func Mounted(mountPoint string) (bool, error) { return false, errTODO }

// LoopsFor returns the loop devices (/dev/loopN) whose backing file lies
// under dir, from /sys/block/loop*/loop/backing_file. Garbage collection and
// leak checks use it.
func LoopsFor(dir string) ([]string, error) { return nil, errTODO }
