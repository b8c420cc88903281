package encfs

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

func ioctl(fd uintptr, req uint, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// keyID is an fscrypt v2 master key identifier, which the kernel derives
// from the key itself (HKDF-SHA512); it is not secret.
type keyID [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte

// addKey adds key to the keyring of the filesystem that dir is on and
// returns the identifier the kernel derived for it. Adding a key that is
// already present only adds a claim, so it is safe to repeat.
func addKey(dir *os.File, key []byte) (keyID, error) {
	var id keyID
	hdr := int(unsafe.Sizeof(unix.FscryptAddKeyArg{}))
	// struct fscrypt_add_key_arg ends in a flexible array: the raw key
	// follows the fixed header in the same buffer. Allocate it as uint64s so
	// the header is suitably aligned.
	words := make([]uint64, (hdr+len(key)+7)/8)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	defer clear(buf)
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&words[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = uint32(len(key))
	copy(buf[hdr:], key)
	if err := ioctl(dir.Fd(), unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&words[0])); err != nil {
		return id, fmt.Errorf("encfs: FS_IOC_ADD_ENCRYPTION_KEY on %s: %w", dir.Name(), err)
	}
	copy(id[:], arg.Key_spec.U[:])
	return id, nil
}

// removeKey removes the key from the filesystem keyring for all users (a
// crypto-erase must not leave another user's claim behind). busy reports
// that some files were still in use: their inodes keep the key until they
// are released, and the key's status is then "incompletely removed".
// A key that is already absent is not an error.
func removeKey(dir *os.File, id keyID) (busy bool, err error) {
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	err = ioctl(dir.Fd(), unix.FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, unsafe.Pointer(&arg))
	if errors.Is(err, unix.ENOKEY) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("encfs: FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS on %s: %w", dir.Name(), err)
	}
	return arg.Removal_status_flags&unix.FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY != 0, nil
}

// keyStatus returns FSCRYPT_KEY_STATUS_{ABSENT,PRESENT,INCOMPLETELY_REMOVED}.
func keyStatus(dir *os.File, id keyID) (uint32, error) {
	var arg unix.FscryptGetKeyStatusArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(dir.Fd(), unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Pointer(&arg)); err != nil {
		return 0, fmt.Errorf("encfs: FS_IOC_GET_ENCRYPTION_KEY_STATUS on %s: %w", dir.Name(), err)
	}
	return arg.Status, nil
}

// setPolicy makes the empty directory dir encrypted with the key id:
// AES-256-XTS for contents, AES-256-CTS for names, names padded to 32 bytes
// so their lengths leak as little as possible.
func setPolicy(dir *os.File, id keyID) error {
	p := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     id,
	}
	if err := ioctl(dir.Fd(), unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&p)); err != nil {
		return fmt.Errorf("encfs: FS_IOC_SET_ENCRYPTION_POLICY on %s: %w", dir.Name(), err)
	}
	return nil
}

// getPolicy returns the v2 policy of dir. It works without the key, which
// is how Open checks a key before trusting it and Destroy finds the key to
// remove. A directory without a policy gives ENODATA.
func getPolicy(dir *os.File) (unix.FscryptPolicyV2, error) {
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	var p unix.FscryptPolicyV2
	if err := ioctl(dir.Fd(), unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); err != nil {
		return p, fmt.Errorf("encfs: FS_IOC_GET_ENCRYPTION_POLICY_EX on %s: %w", dir.Name(), err)
	}
	if arg.Policy[0] != unix.FSCRYPT_POLICY_V2 {
		return p, fmt.Errorf("encfs: %s has an fscrypt v%d policy, want v2", dir.Name(), arg.Policy[0])
	}
	p = *(*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	return p, nil
}
