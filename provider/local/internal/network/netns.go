package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live, as with `ip netns`.
const netnsDir = "/run/netns"

// hostNSPath names the calling process's own network namespace (that of its
// main thread; InNetNS never leaves a thread elsewhere).
const hostNSPath = "/proc/self/ns/net"

// InNetNS runs fn on an OS thread switched into the network namespace at
// path, and switches back. Sockets fn opens belong to that namespace and stay
// there after InNetNS returns; goroutines fn starts do not inherit the
// namespace. If switching back fails, the thread is left locked so the Go
// runtime discards it instead of reusing it in the wrong namespace.
func InNetNS(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	return inNS(target, fn)
}

func inNS(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The goroutine exits when done; a locked goroutine that exits
		// takes its thread with it, which is what we want on failure.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			// setns failed, so the thread is still where it was.
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("return to original netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// isNetNSMount reports whether path is a bind-mounted network namespace.
func isNetNSMount(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// ensureNetnsDir makes /run/netns a shared mount point, as `ip netns add`
// does, so namespaces created later propagate into mount namespaces that
// were cloned from this one (nspawn's, for instance).
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == unix.EINVAL {
		// Not a mount point yet: bind it onto itself first.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", netnsDir, err)
	}
	return nil
}

// createNetNS creates the named network namespace file at path (under
// /run/netns) if it is not one already, like `ip netns add`. It reports
// whether it created it.
func createNetNS(path string) (bool, error) {
	if isNetNSMount(path) {
		return false, nil
	}
	if err := ensureNetnsDir(); err != nil {
		return false, err
	}
	// A plain file left by a crash between create and mount is reused.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		merr := unix.Mount(self, path, "none", unix.MS_BIND, "")
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(merr, fmt.Errorf("return to original netns: %w", err))
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		if merr != nil {
			merr = fmt.Errorf("bind-mount netns to %s: %w", path, merr)
		}
		errc <- merr
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return false, err
	}
	return true, nil
}

// deleteNetNS unmounts and removes a named network namespace, like
// `ip netns delete`. The namespace itself lives on while a process or an
// open file still refers to it. Missing is not an error.
func deleteNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// listNetNS returns the names in /run/netns that start with prefix.
func listNetNS(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// nsHandle is an open network namespace with a netlink handle in it.
type nsHandle struct {
	ns netns.NsHandle
	nl *netlink.Handle
}

func openNS(path string) (*nsHandle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return &nsHandle{ns: ns, nl: nl}, nil
}

func (h *nsHandle) Close() {
	h.nl.Close()
	h.ns.Close()
}

// sysctl writes value to /proc/sys/<key> (key with dots or slashes) inside
// the namespace. Network sysctls are per namespace and resolve against the
// writing thread's namespace.
func (h *nsHandle) sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return inNS(h.ns, func() error {
		return os.WriteFile(p, []byte(value), 0o644)
	})
}

// linkList lists links, retrying when the kernel reports that the dump was
// interrupted by a concurrent change.
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = h.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, err
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}
