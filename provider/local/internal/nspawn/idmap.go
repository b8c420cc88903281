package nspawn

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// IDMapRange is the number of ids each instance's user namespace maps.
const IDMapRange = 65536

// MountIDMapped makes dst a read-only view of src in which every id u in
// 0..65535 appears as base+u (an idmapped bind mount), so one unshifted
// image can be the lower layer of instances with different id ranges.
//
// The kernel takes the mapping from a user namespace: a short-lived helper
// process is started in a new user namespace whose uid_map and gid_map are
// "0 base 65536", its namespace is attached to the mount, and the helper is
// killed (the mount keeps the namespace alive).
func MountIDMapped(src, dst string, base uint32) error {
	usernsFD, cleanup, err := userNS(base)
	if err != nil {
		return err
	}
	defer cleanup()
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("nspawn: open_tree %s: %w", src, err)
	}
	defer unix.Close(tree)
	attr := &unix.MountAttr{
		Attr_set:  unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NODEV,
		Userns_fd: uint64(usernsFD),
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return fmt.Errorf("nspawn: mount_setattr idmap %s: %w", src, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("nspawn: move_mount %s: %w", dst, err)
	}
	return nil
}

// userNS returns an fd of a new user namespace mapping 0..65535 to base.
func userNS(base uint32) (int, func(), error) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return -1, nil, fmt.Errorf("nspawn: %w", err)
	}
	cmd := exec.Command(sleep, "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: IDMapRange}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: IDMapRange}},
		Pdeathsig:   syscall.SIGKILL,
	}
	// Go writes the maps before the child execs, so once Start returns the
	// namespace carries the mapping.
	if err := cmd.Start(); err != nil {
		return -1, nil, fmt.Errorf("nspawn: user namespace helper: %w", err)
	}
	kill := func() { cmd.Process.Kill(); cmd.Wait() }
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		kill()
		return -1, nil, fmt.Errorf("nspawn: %w", err)
	}
	return int(f.Fd()), func() { f.Close(); kill() }, nil
}
