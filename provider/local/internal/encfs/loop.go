package encfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// attachLoop binds image to a free loop device with LO_FLAGS_AUTOCLEAR and
// returns the device path and an open descriptor of it. The caller must keep
// the descriptor open until the filesystem is mounted: with autoclear the
// kernel detaches the device on its last close, which is what makes an
// unmount (or a crash of everything holding it) release the device.
func attachLoop(image string) (string, *os.File, error) {
	backing, err := os.OpenFile(image, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("encfs: loop: %w", err)
	}
	defer backing.Close() // the loop device holds its own reference
	abs, err := realPath(image)
	if err != nil {
		return "", nil, err
	}
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("encfs: loop: %w", err)
	}
	defer ctl.Close()

	// Another process can take the free device between GET_FREE and
	// CONFIGURE (EBUSY); ask again.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("encfs: loop: LOOP_CTL_GET_FREE: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		f, err := openLoopDev(dev, n)
		if err != nil {
			return "", nil, err
		}
		err = configureLoop(f, backing, abs)
		if err == nil {
			return dev, f, nil
		}
		f.Close()
		if !errors.Is(err, unix.EBUSY) || attempt >= 20 {
			return "", nil, fmt.Errorf("encfs: loop: attach %s to %s: %w", image, dev, err)
		}
		time.Sleep(time.Duration(attempt+1) * time.Millisecond)
	}
}

func openLoopDev(dev string, n int) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		// Without devtmpfs nobody creates the node for a new device.
		if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("encfs: loop: mknod %s: %w", dev, err)
		}
		f, err = os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("encfs: loop: %w", err)
	}
	return f, nil
}

func configureLoop(dev, backing *os.File, name string) error {
	var info unix.LoopInfo64
	info.Flags = unix.LO_FLAGS_AUTOCLEAR
	// lo_file_name is informational (losetup shows it); GC reads the full
	// path from sysfs backing_file instead, as this field is 64 bytes.
	copy(info.File_name[:unix.LO_NAME_SIZE-1], name)
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info}
	err := ioctl(dev.Fd(), unix.LOOP_CONFIGURE, unsafe.Pointer(&cfg))
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	// Kernels before 5.8 lack LOOP_CONFIGURE.
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(dev.Fd()), &info); err != nil {
		unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// detachLoop detaches dev if it is still attached. With autoclear set the
// kernel may still be finishing that itself, so EBUSY/ENXIO are retried
// briefly and ENXIO (nothing attached) is success.
func detachLoop(dev string) error {
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("encfs: loop: %w", err)
		}
		err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		f.Close()
		switch {
		case err == nil, errors.Is(err, unix.ENXIO):
			return nil
		case errors.Is(err, unix.EBUSY) && attempt < 50:
			time.Sleep(20 * time.Millisecond)
		default:
			return fmt.Errorf("encfs: loop: detach %s: %w", dev, err)
		}
	}
}

// loopBacking returns the backing file of /dev/loopN ("" if detached).
func loopBacking(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	// The kernel appends " (deleted)" when the backing file was unlinked.
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)"), nil
}

// LoopsFor returns the loop devices (/dev/loopN) whose backing file lies
// under dir (or is dir itself), from /sys/block/loop*/loop/backing_file.
// Garbage collection and leak checks use it.
func LoopsFor(dir string) ([]string, error) {
	dir, err := realPath(dir)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("encfs: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := loopBacking(e.Name())
		if err != nil {
			return nil, fmt.Errorf("encfs: %w", err)
		}
		if b != "" && (b == dir || strings.HasPrefix(b, dir+"/") || dir == "/") {
			out = append(out, "/dev/"+e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}
