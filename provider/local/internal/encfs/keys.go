package encfs

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/compute-sdk/compute"
	"golang.org/x/sys/unix"
)

// ErrUnwrap is returned by Unwrap when the wrapped key does not authenticate:
// the master key or the instance ID differs from the ones used by Wrap, or
// the stored bytes were altered.
var ErrUnwrap = errors.New("encfs: wrapped key does not authenticate")

// NewKey returns a fresh random instance key of KeySize bytes.
func NewKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("encfs: new key: %w", err)
	}
	return k, nil
}

// LoadOrCreateMasterKey reads the MasterKeySize-byte master key at path,
// creating it (directory 0700, file 0600, written atomically) if it does not
// exist. A key file that is readable or writable by group or others, that is
// not a regular file owned by the caller, or that has the wrong size is
// refused with an error wrapping compute.ErrPrecondition: silently using a
// leaked or truncated key would defeat encryption at rest.
func LoadOrCreateMasterKey(path string) ([]byte, error) {
	if path == "" {
		return nil, compute.InvalidField("masterKeyFile", path, "empty path")
	}
	key, err := readMasterKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := createMasterKey(path); err != nil {
		return nil, err
	}
	return readMasterKey(path)
}

// readMasterKey opens path without following a final symlink and checks the
// opened file itself, so a swap between check and read cannot slip in a
// different file.
func readMasterKey(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("encfs: master key %s is a symlink: %w", path, compute.ErrPrecondition)
		}
		return nil, fmt.Errorf("encfs: master key: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("encfs: master key: stat %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("encfs: master key %s is not a regular file: %w", path, compute.ErrPrecondition)
	case st.Mode&0o077 != 0:
		return nil, fmt.Errorf("encfs: master key %s has mode %#o, want 0600 (chmod 600 %s): %w",
			path, st.Mode&0o777, path, compute.ErrPrecondition)
	case int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("encfs: master key %s is owned by uid %d, not by uid %d: %w",
			path, st.Uid, os.Geteuid(), compute.ErrPrecondition)
	case st.Size != MasterKeySize:
		return nil, fmt.Errorf("encfs: master key %s has %d bytes, want %d: %w",
			path, st.Size, MasterKeySize, compute.ErrPrecondition)
	}
	key := make([]byte, MasterKeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("encfs: master key: read %s: %w", path, err)
	}
	return key, nil
}

// createMasterKey writes a new key to a temporary file and links it into
// place. link(2), unlike rename(2), fails if path exists, so two processes
// racing to create the key both end up using the one that won.
func createMasterKey(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("encfs: master key dir: %w", err)
	}
	key := make([]byte, MasterKeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("encfs: master key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".master-key-*") // mode 0600
	if err != nil {
		return fmt.Errorf("encfs: master key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(key)
	clear(key)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("encfs: master key: write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("encfs: master key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Wrap seals key with master using AES-256-GCM and a random nonce. aad (the
// instance ID) is bound into the ciphertext, so a wrapped key copied to
// another instance's record does not unwrap. The result is nonce||ciphertext.
func Wrap(master, key []byte, aad string) ([]byte, error) {
	aead, err := newAEAD(master)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(key)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("encfs: wrap: %w", err)
	}
	return aead.Seal(nonce, nonce, key, []byte(aad)), nil
}

// Unwrap reverses Wrap. It fails with an error wrapping ErrUnwrap if master,
// aad or the wrapped bytes differ from those used by Wrap.
func Unwrap(master, wrapped []byte, aad string) ([]byte, error) {
	aead, err := newAEAD(master)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("encfs: wrapped key of %d bytes is too short: %w", len(wrapped), ErrUnwrap)
	}
	nonce, sealed := wrapped[:aead.NonceSize()], wrapped[aead.NonceSize():]
	key, err := aead.Open(nil, nonce, sealed, []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("encfs: instance %q: %w", aad, ErrUnwrap)
	}
	return key, nil
}

func newAEAD(master []byte) (cipher.AEAD, error) {
	if len(master) != MasterKeySize {
		return nil, compute.InvalidField("masterKey", "", fmt.Sprintf("%d bytes, want %d", len(master), MasterKeySize))
	}
	if bytes.Count(master, []byte{0}) == len(master) {
		// An all-zero key is what an uninitialised buffer looks like.
		return nil, compute.InvalidField("masterKey", "", "all zero")
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	return cipher.NewGCM(block)
}
