package local

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
	"github.com/compute-sdk/compute/provider/local/internal/encfs"
	"github.com/compute-sdk/compute/provider/local/internal/image"
	"github.com/compute-sdk/compute/provider/local/internal/network"
	"github.com/compute-sdk/compute/provider/local/internal/nspawn"
)

// volumeSize is the apparent size of each instance's sparse disk image.
const volumeSize = 8 << 30

// stopGrace is how long a stop waits for a clean shutdown before killing.
const stopGrace = 10 * time.Second

// Paths of one instance's files.
func (p *Provider) instDir(id string) string   { return filepath.Join(p.instancesDir(), id) }
func (p *Provider) diskImage(id string) string { return filepath.Join(p.instDir(id), "disk.img") }
func (p *Provider) volDir(id string) string    { return filepath.Join(p.instDir(id), "vol") }
func (p *Provider) lowerDir(id string) string  { return filepath.Join(p.instDir(id), "lower") }
func (p *Provider) rootDir(id string) string   { return filepath.Join(p.instDir(id), "rootfs") }
func (p *Provider) consoleLog(id string) string {
	return filepath.Join(p.instDir(id), "console.log")
}

// machine is the nspawn machine name of instance id.
func (p *Provider) machine(id string) string { return p.cfg.Prefix + "-" + id }

// hexID is the instance ID without "i-", as the network package wants it.
func hexID(id string) string { return strings.TrimPrefix(id, "i-") }

func (p *Provider) bridgeName(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return p.cfg.Prefix + "b" + hex.EncodeToString(sum[:4])
}

// macOf derives a stable, locally administered unicast MAC from the ID.
func macOf(id string) net.HardwareAddr {
	b, _ := hex.DecodeString(hexID(id))
	return net.HardwareAddr{0x02, 0xc0, b[0], b[1], b[2], b[3]}
}

// self identifies the calling process, for pending records.
func self() nspawn.Process {
	st, _ := nspawn.StartTime(os.Getpid())
	return nspawn.Process{PID: os.Getpid(), StartTime: st}
}

// Test seams.
var (
	// testHookCreate is called at named stages of CreateInstance; a
	// returned error fails the create there (and is undone).
	testHookCreate func(stage, id string) error
	// errSimulatedCrash from testHookCreate makes CreateInstance return
	// at once, leaving everything in place as a crash of the creating
	// process would (the record names a dead creator).
	errSimulatedCrash = errors.New("local: simulated crash")
)

func (p *Provider) hook(stage, id string, start time.Time) error {
	p.log.Debug("create stage done", "instance", id, "stage", stage, "elapsed", time.Since(start))
	if testHookCreate != nil {
		return testHookCreate(stage, id)
	}
	return nil
}

// CreateInstance creates and boots an instance. It returns once the
// container is launched (status pending until sshd accepts; see Wait). It is
// idempotent by RefID (or Name), also across processes.
func (p *Provider) CreateInstance(ctx context.Context, spec compute.InstanceSpec) (_ *compute.Instance, err error) {
	if err := policy.ValidateInstanceSpec(spec); err != nil {
		return nil, err
	}
	if spec.Image != "" && spec.Image != image.Name {
		return nil, compute.InvalidField("image", spec.Image, "unknown image (want "+image.Name+")")
	}
	typ, err := instanceType(spec.Type)
	if err != nil {
		return nil, err
	}
	lower, _, err := image.Ensure(ctx, p.cfg.ImageDir, nil)
	if err != nil {
		return nil, fmt.Errorf("local: image: %w", err)
	}

	start := time.Now()
	rec, existing, err := p.reserve(spec, typ)
	if err != nil {
		return nil, err
	}
	if existing {
		return p.GetInstance(ctx, rec.ID)
	}
	log := p.log.With("instance", rec.ID, "name", rec.Name)
	log.Debug("creating")
	defer func() {
		if err == nil {
			return
		}
		if errors.Is(err, errSimulatedCrash) {
			// Leave everything as a dead creator would.
			if unlock, lerr := p.lk.lock(); lerr == nil {
				if r, gerr := p.st.instance(rec.ID); gerr == nil {
					r.Creator = nspawn.Process{}
					p.st.write("instances", r.ID, r)
				}
				unlock()
			}
			return
		}
		log.Debug("create failed, undoing", "err", err)
		// Undo with a fresh context: the caller's may be what failed.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := p.destroy(uctx, rec); derr != nil {
			log.Warn("undo of failed create incomplete (GC will finish it)", "err", derr)
		}
	}()

	// Network first, under the lock (the network package needs callers to
	// serialise across processes). The instance's rules are in place
	// before anything can boot.
	if err := p.withLock(func() error { return p.attach(ctx, rec, spec.Rules) }); err != nil {
		return nil, err
	}
	if err := p.hook("network", rec.ID, start); err != nil {
		return nil, err
	}

	if err := os.MkdirAll(p.instDir(rec.ID), 0o700); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	key, err := encfs.NewKey()
	if err != nil {
		return nil, err
	}
	rec.WrappedKey, err = encfs.Wrap(p.master, key, rec.ID)
	if err != nil {
		return nil, err
	}
	vol, err := encfs.Create(ctx, p.diskImage(rec.ID), p.volDir(rec.ID), volumeSize, key)
	if err != nil {
		return nil, fmt.Errorf("local: volume: %w", err)
	}
	clear(key)
	if err := p.hook("volume", rec.ID, start); err != nil {
		return nil, err
	}
	if err := p.mountRoot(rec, lower, vol.DataDir()); err != nil {
		return nil, err
	}
	hk, err := newHostKey("root@" + rec.Name)
	if err != nil {
		return nil, err
	}
	rec.HostKey = hk.info
	files := instanceFiles{hostname: rec.Name, sshKeys: rec.SSHKeys, hostKey: hk, base: rec.UIDBase, memBytes: int64(typ.MemoryMiB) << 20}
	if err := files.write(p.rootDir(rec.ID)); err != nil {
		return nil, err
	}
	if err := p.hook("files", rec.ID, start); err != nil {
		return nil, err
	}
	if err := p.launch(rec, typ); err != nil {
		return nil, err
	}
	rec.State = stateBooting
	rec.Creator = nspawn.Process{}
	if err := p.withLock(func() error { return p.st.write("instances", rec.ID, rec) }); err != nil {
		return nil, err
	}
	log.Debug("launched", "pid", rec.Proc.PID, "elapsed", time.Since(start))
	return p.toInstance(ctx, rec), nil
}

func (p *Provider) withLock(fn func() error) error {
	unlock, err := p.lk.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}

// reserve runs under the lock: it returns the existing instance for the
// spec's idempotency key, or allocates an ID, addresses and an id range and
// writes a pending record (plus the key's index entry) for a new one.
func (p *Provider) reserve(spec compute.InstanceSpec, typ compute.InstanceType) (rec *instanceRecord, existing bool, err error) {
	unlock, err := p.lk.lock()
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	key := spec.IdempotencyKey()
	var ref refRecord
	switch err := p.st.read("refs", refName(key), &ref); {
	case err == nil && ref.Key == key:
		if r, err := p.st.instance(ref.ID); err == nil {
			return r, true, nil
		}
		// A stale index entry (its instance is gone): replace it.
	case err != nil && !errors.Is(err, compute.ErrNotFound):
		return nil, false, err
	}
	var cl *clusterRecord
	if spec.Cluster != "" {
		if cl, err = p.st.cluster(spec.Cluster); err != nil {
			return nil, false, err
		}
	}
	if err := p.checkSourceClusters(spec.Rules); err != nil {
		return nil, false, err
	}
	recs, err := p.st.instances()
	if err != nil {
		return nil, false, err
	}
	for _, r := range recs {
		if r.Name == spec.Name {
			return nil, false, fmt.Errorf("instance name %q is used by %s (created with another RefID): %w", spec.Name, r.ID, compute.ErrConflict)
		}
	}
	clusters, err := p.st.clusters()
	if err != nil {
		return nil, false, err
	}
	id, err := newID(func(id string) bool {
		_, err := os.Lstat(p.st.path("instances", id))
		_, err2 := os.Lstat(p.instDir(id))
		return err == nil || err2 == nil
	})
	if err != nil {
		return nil, false, err
	}
	rec = &instanceRecord{
		ID: id, Name: spec.Name, RefID: spec.RefID, Key: key, Cluster: spec.Cluster,
		Image: image.Name, Type: typ.Name, Labels: spec.Labels, CreatedAt: time.Now().UTC(),
		State: statePending, Creator: self(), MAC: macOf(id).String(), SSHKeys: spec.SSHKeys,
	}
	if cl != nil {
		rec.Bridge, rec.Subnet = cl.Bridge, cl.Subnet
	} else {
		rec.Bridge = p.bridgeName("instance/" + id)
		if rec.Subnet, err = p.freeSubnet(recs, clusters); err != nil {
			return nil, false, err
		}
	}
	if rec.Addr, err = freeAddr(rec.Subnet, recs); err != nil {
		return nil, false, err
	}
	if !p.cfg.noPrivateUsers {
		if rec.UIDBase, err = p.freeUIDBase(recs); err != nil {
			return nil, false, err
		}
	}
	if err := p.st.write("instances", id, rec); err != nil {
		return nil, false, err
	}
	if err := p.st.write("refs", refName(key), refRecord{Key: key, ID: id}); err != nil {
		p.st.remove("instances", id)
		return nil, false, err
	}
	return rec, false, nil
}

func newID(taken func(string) bool) (string, error) {
	for range 100 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		id := "i-" + hex.EncodeToString(b[:])
		if !taken(id) {
			return id, nil
		}
	}
	return "", fmt.Errorf("local: no free instance ID: %w", compute.ErrTransient)
}

// freeSubnet returns the lowest /24 of the pool (except its last, which
// holds the host and probe links) that no cluster and no lone instance uses.
func (p *Provider) freeSubnet(recs []*instanceRecord, clusters []*clusterRecord) (netip.Prefix, error) {
	used := map[netip.Prefix]bool{}
	for _, c := range clusters {
		used[c.Subnet] = true
	}
	for _, r := range recs {
		used[r.Subnet] = true
	}
	pool := p.cfg.Pool
	n := 1 << (24 - pool.Bits())
	a := pool.Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8
	for i := range n - 1 {
		v := base + uint32(i)<<8
		pr := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
		if !used[pr] {
			return pr, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("local: pool %s has no free /24: %w", pool, compute.ErrQuota)
}

// freeAddr returns the lowest free host address of subnet (.1 is the
// bridge's gateway).
func freeAddr(subnet netip.Prefix, recs []*instanceRecord) (netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, r := range recs {
		used[r.Addr] = true
	}
	a := subnet.Addr().Next().Next()
	for ; subnet.Contains(a) && a.As4()[3] != 255; a = a.Next() {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("local: subnet %s is full: %w", subnet, compute.ErrQuota)
}

// User namespace id ranges. Each instance gets 65536 host ids starting at
// its UIDBase. Ranges come from a region chosen by the prefix, so providers
// with different prefixes (state roots) on one host do not hand out the
// same range; within a prefix they are allocated from the records like
// addresses and never reused while an instance holds them.
const (
	uidFirst        = 0x60000000
	uidRegions      = 128
	uidPerRegion    = 256 // ranges per region
	uidRangeSize    = nspawn.IDMapRange
	uidRegionStride = uidPerRegion * uidRangeSize
)

func (p *Provider) freeUIDBase(recs []*instanceRecord) (uint32, error) {
	h := fnv.New32a()
	h.Write([]byte(p.cfg.Prefix))
	region := h.Sum32() % uidRegions
	used := map[uint32]bool{}
	for _, r := range recs {
		used[r.UIDBase] = true
	}
	for i := range uint32(uidPerRegion) {
		b := uidFirst + region*uidRegionStride + i*uidRangeSize
		if !used[b] {
			return b, nil
		}
	}
	return 0, fmt.Errorf("local: all %d user id ranges of prefix %s are in use: %w", uidPerRegion, p.cfg.Prefix, compute.ErrQuota)
}

// attach runs under the lock: it creates the lone instance's bridge,
// attaches the instance to its bridge and installs its initial rules.
func (p *Provider) attach(ctx context.Context, rec *instanceRecord, specs []compute.RuleSpec) error {
	t := compute.InstanceTarget(rec.ID)
	rules, err := policy.NewRules(t, specs)
	if err != nil {
		return err
	}
	if err := p.st.setRules(t, rules); err != nil {
		return err
	}
	return p.attachRules(ctx, rec, rules)
}

// attachRules attaches rec to its bridge (idempotent) and installs rules
// (under the lock).
func (p *Provider) attachRules(ctx context.Context, rec *instanceRecord, rules []compute.FirewallRule) error {
	if rec.Cluster == "" {
		if err := p.net.EnsureBridge(ctx, rec.Bridge, rec.Subnet); err != nil {
			return fmt.Errorf("local: bridge: %w", err)
		}
	}
	nsPath, err := p.net.AttachInstance(ctx, network.Attachment{
		ID: hexID(rec.ID), Bridge: rec.Bridge, Addr: rec.Addr, MAC: macOf(rec.ID),
	})
	if err != nil {
		return fmt.Errorf("local: network: %w", err)
	}
	if err := allowPing(nsPath, rec.UIDBase); err != nil {
		return err
	}
	return p.applyInstance(ctx, rec, rules)
}

// allowPing lets every group of the instance open ICMP echo ("ping")
// sockets in its network namespace. Raw sockets need CAP_NET_RAW over the
// namespace, which a user-namespaced root does not have, so without this
// nothing inside could ping. The range is the instance's own host gids.
func allowPing(nsPath string, base uint32) error {
	return network.InNetNS(nsPath, func() error {
		// /proc/sys/net follows the network namespace of the thread that
		// opens it, which InNetNS has switched.
		v := fmt.Sprintf("%d %d\n", base, base+uidRangeSize-1)
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte(v), 0o644); err != nil {
			return fmt.Errorf("local: ping_group_range: %w", err)
		}
		return nil
	})
}

// mountRoot mounts the instance's root: an overlay whose lower layer is
// the shared image (idmapped to the instance's id range when it has one)
// and whose upper and work dirs live in the encrypted volume.
func (p *Provider) mountRoot(rec *instanceRecord, image, data string) error {
	upper, work := filepath.Join(data, "upper"), filepath.Join(data, "work")
	for _, d := range []string{upper, work, p.rootDir(rec.ID)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("local: %w", err)
		}
	}
	// The overlay's root directory takes its owner from the upper dir:
	// the instance's root must own it.
	if err := os.Lchown(upper, int(rec.UIDBase), int(rec.UIDBase)); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	lower := image
	if rec.UIDBase != 0 {
		lower = p.lowerDir(rec.ID)
		if err := os.MkdirAll(lower, 0o755); err != nil {
			return fmt.Errorf("local: %w", err)
		}
		if mounted, _ := encfs.Mounted(lower); !mounted {
			if err := nspawn.MountIDMapped(image, lower, rec.UIDBase); err != nil {
				return fmt.Errorf("local: %w", err)
			}
		}
	}
	if mounted, _ := encfs.Mounted(p.rootDir(rec.ID)); mounted {
		return nil
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", p.rootDir(rec.ID), "overlay", 0, opts); err != nil {
		return fmt.Errorf("local: mount overlay: %w", err)
	}
	return nil
}

// unmountRoot undoes mountRoot. Missing mounts are fine.
func (p *Provider) unmountRoot(id string) error {
	var errs []error
	for _, d := range []string{p.rootDir(id), p.lowerDir(id)} {
		if err := unmount(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func unmount(dir string) error {
	for range 50 {
		err := unix.Unmount(dir, 0)
		switch {
		case err == nil:
			continue // stacked mounts: unmount until none is left
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		case errors.Is(err, unix.EBUSY):
			time.Sleep(20 * time.Millisecond)
		default:
			return fmt.Errorf("local: unmount %s: %w", dir, err)
		}
	}
	// Still busy: detach it lazily so it goes away with its last user.
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("local: unmount %s: %w", dir, err)
	}
	return nil
}

// launch creates the instance's cgroups and starts its container.
func (p *Provider) launch(rec *instanceRecord, typ compute.InstanceType) error {
	l := limitsOf(typ)
	g, err := cgroups.Create(p.cgPrefix, rec.ID, l)
	if err != nil {
		return fmt.Errorf("local: cgroups: %w", err)
	}
	rec.CgroupPaths = g.Paths
	// tmpfs pages cannot be reclaimed by killing a process: a full tmpfs
	// at the memory limit makes the OOM killer take PID 1. Keep the
	// writable tmpfs mounts well below the limit.
	var extra []string
	if l.MemoryBytes > 0 {
		extra = append(extra,
			fmt.Sprintf("--tmpfs=/dev/shm:mode=1777,size=%d", l.MemoryBytes/4),
			fmt.Sprintf("--tmpfs=/tmp:mode=1777,size=%d", l.MemoryBytes/4))
	}
	proc, err := nspawn.Start(nspawn.Options{
		Machine:          p.machine(rec.ID),
		Root:             p.rootDir(rec.ID),
		NetNS:            p.net.InstanceNetNS(hexID(rec.ID)),
		ProcsFiles:       g.ProcsFiles(),
		PrivateUsersBase: rec.UIDBase,
		ExtraArgs:        extra,
		ConsoleLog:       p.consoleLog(rec.ID),
	})
	if err != nil {
		return err
	}
	rec.Proc = proc
	return nil
}

// GetInstance returns the instance with its status as it is now.
func (p *Provider) GetInstance(ctx context.Context, id string) (*compute.Instance, error) {
	rec, err := p.st.instance(id)
	if err != nil {
		return nil, err
	}
	return p.toInstance(ctx, rec), nil
}

// ListInstances lists instances sorted by name.
func (p *Provider) ListInstances(ctx context.Context, opts compute.ListOptions) ([]*compute.Instance, error) {
	recs, err := p.st.instances()
	if err != nil {
		return nil, err
	}
	var out []*compute.Instance
	for _, r := range recs {
		inst := p.toInstance(ctx, r)
		if opts.Matches(inst) {
			out = append(out, inst)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// toInstance reports rec with a status that reflects the live process.
func (p *Provider) toInstance(ctx context.Context, rec *instanceRecord) *compute.Instance {
	inst := &compute.Instance{
		ID: rec.ID, Name: rec.Name, RefID: rec.RefID, Provider: "local", Cluster: rec.Cluster,
		Image: rec.Image, Type: rec.Type, Labels: rec.Labels, CreatedAt: rec.CreatedAt,
		Addresses:    []netip.Addr{rec.Addr},
		StatusReason: rec.StatusReason,
		SSH:          compute.SSHInfo{User: "root", Host: rec.Addr.String(), Port: 22},
	}
	if rec.HostKey.PublicKey != "" {
		inst.SSH.HostKeys = []compute.HostKey{rec.HostKey}
	}
	switch rec.State {
	case statePending:
		inst.Status = compute.StatusPending
		if !rec.Creator.Alive() {
			inst.Status = compute.StatusFailed
			inst.StatusReason = "creation was interrupted (its process died); run GC to remove the remains"
		}
	case stateBooting, stateRunning:
		switch {
		case !rec.Proc.Alive() && rec.State == stateBooting:
			inst.Status = compute.StatusFailed
			inst.StatusReason = "the container exited while booting; see " + p.consoleLog(rec.ID)
		case !rec.Proc.Alive():
			inst.Status = compute.StatusStopped
			inst.StatusReason = "the container exited (shut down from inside, or crashed); see " + p.consoleLog(rec.ID)
		case rec.State == stateRunning || p.sshdReady(rec):
			inst.Status = compute.StatusRunning
			if rec.State == stateBooting {
				p.markRunning(rec.ID, rec.Proc)
			}
		default:
			inst.Status = compute.StatusPending
		}
	case stateStopped:
		inst.Status = compute.StatusStopped
	case stateTerminating:
		inst.Status = compute.StatusTerminating
	default:
		inst.Status = compute.StatusFailed
	}
	return inst
}

// sshdReady reports whether sshd in the instance accepts connections. It
// dials from inside the instance's own network namespace: the router's
// firewall blocks port 22 unless a rule opens it, which says nothing about
// whether sshd is up.
func (p *Provider) sshdReady(rec *instanceRecord) bool {
	ok := false
	network.InNetNS(p.net.InstanceNetNS(hexID(rec.ID)), func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(rec.Addr, 22).String(), 300*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		line, err := bufio.NewReader(c).ReadString('\n')
		ok = err == nil && strings.HasPrefix(line, "SSH-2.0-")
		return nil
	})
	return ok
}

// markRunning records that sshd was seen, if the record still describes
// the same container.
func (p *Provider) markRunning(id string, proc nspawn.Process) {
	p.withLock(func() error {
		r, err := p.st.instance(id)
		if err != nil || r.State != stateBooting || r.Proc != proc {
			return nil
		}
		r.State = stateRunning
		return p.st.write("instances", id, r)
	})
}

// TerminateInstance destroys the instance: its container, network
// attachment and rules, and its disk (crypto-erased: the key goes first).
func (p *Provider) TerminateInstance(ctx context.Context, id string) error {
	var rec *instanceRecord
	err := p.withLock(func() error {
		r, err := p.st.instance(id)
		if err != nil {
			return err
		}
		if r.State == statePending && r.Creator.Alive() && r.Creator != self() {
			return fmt.Errorf("instance %s is being created by process %d: %w", id, r.Creator.PID, compute.ErrConflict)
		}
		r.State = stateTerminating
		rec = r
		return p.st.write("instances", id, r)
	})
	if err != nil {
		return err
	}
	return p.destroy(ctx, rec)
}

// destroy removes everything of rec, in the reverse order of creation, then
// its record. It carries on past errors so that as much as possible is
// gone, and reports them all; the record is kept if anything remains, so
// a retry or GC can finish.
func (p *Provider) destroy(ctx context.Context, rec *instanceRecord) error {
	var errs []error
	// The disk is about to be crypto-erased: a clean shutdown would only
	// make terminate slower.
	if err := p.stopProcess(ctx, rec, false); err != nil {
		errs = append(errs, err)
	}
	if err := p.withLock(func() error {
		var errs []error
		if err := p.net.DetachInstance(ctx, hexID(rec.ID)); err != nil {
			errs = append(errs, err)
		}
		if err := p.st.setRules(compute.InstanceTarget(rec.ID), nil); err != nil {
			errs = append(errs, err)
		}
		if rec.Cluster == "" && rec.Bridge != "" {
			if err := p.net.DeleteBridge(ctx, rec.Bridge); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}); err != nil {
		errs = append(errs, err)
	}
	if err := p.removeFiles(ctx, rec.ID); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("local: terminate %s: %w", rec.ID, errors.Join(errs...))
	}
	return p.withLock(func() error {
		if err := p.st.remove("instances", rec.ID); err != nil {
			return err
		}
		var ref refRecord
		if err := p.st.read("refs", refName(rec.Key), &ref); err == nil && ref.ID == rec.ID {
			return p.st.remove("refs", refName(rec.Key))
		}
		return nil
	})
}

// stopProcess stops the container and removes its cgroups and nspawn's
// leftovers.
func (p *Provider) stopProcess(ctx context.Context, rec *instanceRecord, graceful bool) error {
	var errs []error
	stop := rec.Proc.Kill
	if graceful {
		stop = func(ctx context.Context) error { return rec.Proc.Stop(ctx, stopGrace) }
	}
	if err := stop(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroup(p.cgPrefix, rec.ID, rec.CgroupPaths); err != nil {
		errs = append(errs, err)
	}
	root := ""
	if m, _ := encfs.Mounted(p.rootDir(rec.ID)); m {
		root = p.rootDir(rec.ID)
	}
	if err := nspawn.Cleanup(p.machine(rec.ID), root); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeCgroup kills whatever is left in the instance's cgroups (after
// nspawn is gone nothing should be) and removes them.
func removeCgroup(prefix, id string, paths []string) error {
	g := &cgroups.Group{Name: id, Paths: paths}
	if len(paths) == 0 {
		var err error
		if g, err = cgroups.Open(prefix, id); err != nil {
			if errors.Is(err, compute.ErrNotFound) {
				return nil
			}
			return err
		}
	}
	for range 50 {
		pids, err := g.Pids()
		if err != nil || len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return g.Remove()
}

// removeFiles unmounts and crypto-erases the instance's disk and deletes
// its directory.
func (p *Provider) removeFiles(ctx context.Context, id string) error {
	if _, err := os.Lstat(p.instDir(id)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := p.unmountRoot(id); err != nil {
		return err
	}
	// A container's mount namespace is torn down asynchronously after its
	// last process exits; until then its copy of the overlay keeps the
	// volume busy. Retry briefly.
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		err = encfs.Destroy(ctx, p.diskImage(id), p.volDir(id))
		if err == nil || !errors.Is(err, compute.ErrConflict) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	if err := os.RemoveAll(p.instDir(id)); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// StopInstance shuts the instance down, keeping its disk (closed: its key
// leaves the kernel).
func (p *Provider) StopInstance(ctx context.Context, id string) error {
	var rec *instanceRecord
	err := p.withLock(func() error {
		r, err := p.st.instance(id)
		if err != nil {
			return err
		}
		switch r.State {
		case stateBooting, stateRunning, stateFailed:
		case stateStopped:
			return nil
		default:
			return fmt.Errorf("instance %s is %s: %w", id, r.State, compute.ErrConflict)
		}
		rec = r
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	if err := p.stopProcess(ctx, rec, true); err != nil {
		return err
	}
	if err := p.closeDisk(ctx, rec); err != nil {
		return err
	}
	return p.withLock(func() error {
		r, err := p.st.instance(id)
		if err != nil {
			return err
		}
		r.State, r.StatusReason, r.Proc = stateStopped, "", nspawn.Process{}
		return p.st.write("instances", id, r)
	})
}

func (p *Provider) closeDisk(ctx context.Context, rec *instanceRecord) error {
	if err := p.unmountRoot(rec.ID); err != nil {
		return err
	}
	key, err := encfs.Unwrap(p.master, rec.WrappedKey, rec.ID)
	if err != nil {
		return err
	}
	defer clear(key)
	if mounted, _ := encfs.Mounted(p.volDir(rec.ID)); !mounted {
		return nil
	}
	vol, err := encfs.Open(ctx, p.diskImage(rec.ID), p.volDir(rec.ID), key)
	if err != nil {
		return err
	}
	// As in removeFiles: the dead container's namespace may hold the
	// overlay for a moment.
	for deadline := time.Now().Add(5 * time.Second); ; {
		err = vol.Close(ctx)
		if err == nil || !errors.Is(err, compute.ErrConflict) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartInstance boots a stopped instance from its kept disk.
func (p *Provider) StartInstance(ctx context.Context, id string) error {
	var rec *instanceRecord
	err := p.withLock(func() error {
		r, err := p.st.instance(id)
		if err != nil {
			return err
		}
		switch {
		case (r.State == stateBooting || r.State == stateRunning) && r.Proc.Alive():
			return nil // already running
		case r.State == stateStopped, r.State == stateFailed, r.State == stateBooting, r.State == stateRunning:
		default:
			return fmt.Errorf("instance %s is %s: %w", id, r.State, compute.ErrConflict)
		}
		rec = r
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	// A container that died on its own leaves its cgroups and run files.
	if err := p.stopProcess(ctx, rec, false); err != nil {
		return err
	}
	typ, err := instanceType(rec.Type)
	if err != nil {
		return err
	}
	// The network lives in /run: after a host reboot it is gone. Attaching
	// is idempotent, so make sure it is there (rules included).
	if err := p.withLock(func() error {
		rules, err := p.st.rules(compute.InstanceTarget(rec.ID))
		if err != nil {
			return err
		}
		return p.attachRules(ctx, rec, rules)
	}); err != nil {
		return err
	}
	lower, _, err := image.Ensure(ctx, p.cfg.ImageDir, nil)
	if err != nil {
		return err
	}
	key, err := encfs.Unwrap(p.master, rec.WrappedKey, rec.ID)
	if err != nil {
		return err
	}
	vol, err := encfs.Open(ctx, p.diskImage(rec.ID), p.volDir(rec.ID), key)
	clear(key)
	if err != nil {
		return err
	}
	if err := p.mountRoot(rec, lower, vol.DataDir()); err != nil {
		return err
	}
	if err := p.launch(rec, typ); err != nil {
		p.closeDisk(ctx, rec)
		return err
	}
	return p.withLock(func() error {
		r, err := p.st.instance(id)
		if err != nil {
			return err
		}
		r.State, r.StatusReason, r.Proc, r.CgroupPaths = stateBooting, "", rec.Proc, rec.CgroupPaths
		return p.st.write("instances", id, r)
	})
}

// RebootInstance stops and starts the instance.
func (p *Provider) RebootInstance(ctx context.Context, id string) error {
	if err := p.StopInstance(ctx, id); err != nil {
		return err
	}
	return p.StartInstance(ctx, id)
}
