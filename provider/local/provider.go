package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
	"github.com/compute-sdk/compute/provider/local/internal/encfs"
	"github.com/compute-sdk/compute/provider/local/internal/image"
	"github.com/compute-sdk/compute/provider/local/internal/network"
)

// Provider is the local provider. Its methods are safe for concurrent use,
// also by several processes sharing one Root.
type Provider struct {
	cfg    Config
	log    *slog.Logger
	net    *network.Network
	st     *store
	lk     *fileLock
	master []byte
	// cgPrefix is the cgroup directory shared by this provider's
	// instances in every hierarchy.
	cgPrefix string
}

var (
	_ compute.Provider           = (*Provider)(nil)
	_ compute.StopStarter        = (*Provider)(nil)
	_ compute.Rebooter           = (*Provider)(nil)
	_ compute.FirewallManager    = (*Provider)(nil)
	_ compute.GarbageCollector   = (*Provider)(nil)
	_ compute.InstanceTypeLister = (*Provider)(nil)
	_ compute.FeatureReporter    = (*Provider)(nil)
	_ compute.CallerPrefixer     = (*Provider)(nil)
	_ compute.ProbeHoster        = (*Provider)(nil)
	_ compute.Inventorier        = (*Provider)(nil)
)

// minInotifyInstances is what booting many instances needs: each
// container's systemd uses about 8 inotify instances, and the usual host
// default of 128 stops the 16th instance from booting.
const minInotifyInstances = 1024

// New checks the host, creates the state root and the router namespace, and
// loads (or creates) the master key. It fails with an error wrapping
// compute.ErrPrecondition, saying what to install or change, when the host
// cannot run instances.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	for _, c := range Doctor(ctx, cfg) {
		if !c.OK && c.required {
			return nil, fmt.Errorf("local: %s: %s (fix: %s): %w", c.Name, c.Detail, c.Fix, compute.ErrPrecondition)
		}
	}
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	n, err := network.New(network.Config{Prefix: cfg.Prefix, Pool: cfg.Pool, EgressNAT: true, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	master, err := encfs.LoadOrCreateMasterKey(cfg.MasterKeyFile)
	if err != nil {
		return nil, err
	}
	p := &Provider{
		cfg:      cfg,
		log:      cfg.Logger,
		net:      n,
		st:       &store{dir: filepath.Join(cfg.Root, "state")},
		lk:       newFileLock(filepath.Join(cfg.Root, "lock")),
		master:   master,
		cgPrefix: "compute-" + cfg.Prefix,
	}
	if err := p.st.init(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(p.instancesDir(), 0o700); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	unlock, err := p.lk.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.EnsureRouter(ctx); err != nil {
		return nil, fmt.Errorf("local: router: %w", err)
	}
	if err := ensureSharedMount(p.instancesDir()); err != nil {
		return nil, err
	}
	if err := p.restoreBridges(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// restoreBridges recreates cluster bridges (and their rules) that the
// records name but the kernel lacks, as after a host reboot: the router
// namespace lives in /run. It runs under the lock.
func (p *Provider) restoreBridges(ctx context.Context) error {
	clusters, err := p.st.clusters()
	if err != nil || len(clusters) == 0 {
		return err
	}
	have, err := p.net.Bridges(ctx)
	if err != nil {
		return err
	}
	for _, c := range clusters {
		if slices.Contains(have, c.Bridge) {
			continue
		}
		p.log.Info("restoring cluster bridge", "cluster", c.Name, "bridge", c.Bridge)
		if err := p.net.EnsureBridge(ctx, c.Bridge, c.Subnet); err != nil {
			return fmt.Errorf("local: restore bridge of cluster %s: %w", c.Name, err)
		}
		rules, err := p.st.rules(compute.ClusterTarget(c.Name))
		if err != nil {
			return err
		}
		if err := p.applyCluster(ctx, c, rules); err != nil {
			return err
		}
	}
	return nil
}

// Name returns "local".
func (p *Provider) Name() string { return "local" }

// Close releases the provider's own bind mount of its instances directory
// when no instance is left (so the state root can be deleted); instances
// outlive the Provider value, and with instances it does nothing.
func (p *Provider) Close() error {
	if ents, err := os.ReadDir(p.instancesDir()); err != nil || len(ents) > 0 {
		return nil
	}
	// Not lazy: with anything mounted below it fails and the mount stays.
	if err := unix.Unmount(p.instancesDir(), 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// Config returns the effective configuration (defaults filled in).
func (p *Provider) Config() Config { return p.cfg }

func (p *Provider) instancesDir() string { return filepath.Join(p.cfg.Root, "instances") }

// Features reports what the local provider offers beyond its method set.
func (p *Provider) Features() compute.Features {
	return compute.Features{
		IPv6:             false,
		EncryptionAtRest: "fscrypt v2 AES-256-XTS/AES-256-CTS, per-instance key",
	}
}

// InstanceTypes lists the size catalogue.
func (p *Provider) InstanceTypes(ctx context.Context) ([]compute.InstanceType, error) {
	out := make([]compute.InstanceType, len(instanceTypes))
	copy(out, instanceTypes)
	return out, nil
}

var instanceTypes = []compute.InstanceType{
	{Name: "small", VCPUs: 1, MemoryMiB: 1024, MaxPIDs: 512, Default: true},
	{Name: "medium", VCPUs: 2, MemoryMiB: 4096, MaxPIDs: 2048},
	{Name: "large", VCPUs: 2, MemoryMiB: 8192, MaxPIDs: 4096},
}

func instanceType(name string) (compute.InstanceType, error) {
	for _, t := range instanceTypes {
		if t.Name == name || (name == "" && t.Default) {
			return t, nil
		}
	}
	var names []string
	for _, t := range instanceTypes {
		names = append(names, t.Name)
	}
	return compute.InstanceType{}, compute.InvalidField("type", name, "unknown instance type (want one of "+strings.Join(names, ", ")+")")
}

// limitsOf returns the cgroup limits enforcing t, leaving out what this
// host cannot enforce (SECURITY.md says so).
func limitsOf(t compute.InstanceType) cgroups.Limits {
	f := cgroups.Features()
	var l cgroups.Limits
	if f.Memory {
		l.MemoryBytes = int64(t.MemoryMiB) << 20
	}
	if f.CPU {
		l.CPUQuotaMicros = int64(t.VCPUs) * cgroups.DefaultCPUPeriodMicros
		l.CPUPeriodMicros = cgroups.DefaultCPUPeriodMicros
	}
	if f.PIDs {
		l.PIDs = int64(t.MaxPIDs)
	}
	return l
}

// CallerPrefixes returns the host end of the host<->router link: the source
// address instances see for connections from this host.
func (p *Provider) CallerPrefixes(ctx context.Context) ([]netip.Prefix, error) {
	a := p.net.HostAddr()
	return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}, nil
}

// AttachProbeHost attaches an outside vantage point (its own namespace and
// address, outside every cluster).
func (p *Provider) AttachProbeHost(ctx context.Context, name string) (compute.ProbeHost, error) {
	unlock, err := p.lk.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	ph, err := p.net.AttachProbeHost(ctx, name)
	if err != nil {
		return nil, err
	}
	return ph, nil
}

// ImageName is the name of the (only) image, the default of
// InstanceSpec.Image.
const ImageName = image.Name

// BuildImage rebuilds the instance image in imageDir (default
// DefaultImageDir), reporting each step to progress. Instances already
// running keep the image they booted from.
func BuildImage(ctx context.Context, imageDir string, progress func(step string)) (string, error) {
	if imageDir == "" {
		imageDir = envOr("COMPUTE_LOCAL_IMAGE_DIR", DefaultImageDir)
	}
	return image.Build(ctx, imageDir, progress)
}

// EnsureImage builds the image in imageDir unless a current one is cached,
// and returns its root filesystem; built says whether it was built now.
func EnsureImage(ctx context.Context, imageDir string, progress func(step string)) (rootfs string, built bool, err error) {
	if imageDir == "" {
		imageDir = envOr("COMPUTE_LOCAL_IMAGE_DIR", DefaultImageDir)
	}
	return image.Ensure(ctx, imageDir, progress)
}

// Check is one host check of Doctor.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	Fix    string `json:"fix,omitempty"`
	// required checks make New fail; the others degrade a feature.
	required bool
}

// Doctor checks what the local provider needs on this host and says how to
// fix each problem. It changes nothing.
func Doctor(ctx context.Context, cfg Config) []Check {
	cfg, _ = cfg.withDefaults()
	var out []Check
	add := func(name string, ok, required bool, detail, fix string) {
		c := Check{Name: name, OK: ok, Detail: detail, required: required}
		if !ok {
			c.Fix = fix
		}
		out = append(out, c)
	}
	add("root", os.Geteuid() == 0, true, "euid "+strconv.Itoa(os.Geteuid()), "run as root (sudo)")
	for _, b := range []struct{ bin, pkg string }{
		{"systemd-nspawn", "systemd-container"},
		{"debootstrap", "debootstrap"},
		{"mkfs.ext4", "e2fsprogs"},
		{"nsenter", "util-linux"},
	} {
		path, err := exec.LookPath(b.bin)
		detail := path
		if err != nil {
			detail = b.bin + " not found"
		}
		add("binary/"+b.bin, err == nil, true, detail, "apt-get install systemd-container debootstrap e2fsprogs")
	}
	v, err := readInt("/proc/sys/fs/inotify/max_user_instances")
	add("sysctl/inotify", err == nil && v >= minInotifyInstances, true,
		fmt.Sprintf("fs.inotify.max_user_instances=%d (need >= %d: each instance's systemd uses ~8)", v, minInotifyInstances),
		"sysctl -w fs.inotify.max_user_instances=8192")
	for _, f := range []struct{ name, path, fix string }{
		{"kernel/overlayfs", "/sys/module/overlay", "a kernel with CONFIG_OVERLAY_FS"},
		{"kernel/loop", "/dev/loop-control", "a kernel with CONFIG_BLK_DEV_LOOP"},
		{"kernel/userns", "/proc/self/ns/user", "a kernel with CONFIG_USER_NS"},
	} {
		_, err := os.Stat(f.path)
		if f.name == "kernel/overlayfs" && err != nil {
			b, _ := os.ReadFile("/proc/filesystems")
			if strings.Contains(string(b), "overlay") {
				err = nil
			}
		}
		add(f.name, err == nil, true, f.path, f.fix)
	}
	cf := cgroups.Features()
	add("cgroups/memory", cf.Memory, false, "v1 memory hierarchy: per-instance memory limits", "mount the cgroup v1 memory controller; without it instances have no memory limit")
	add("cgroups/cpu", cf.CPU, false, "v1 cpu hierarchy: per-instance CPU quota", "mount the cgroup v1 cpu controller; without it instances have no CPU quota")
	add("cgroups/pids", cf.PIDs, false, "v1 pids hierarchy: per-instance process limit", "mount the cgroup v1 pids controller; without it instances have no process limit")
	add("image", image.Ready(cfg.ImageDir), false, image.RootFS(cfg.ImageDir), "computectl image build (built on first create otherwise)")
	_, err = os.Stat(cfg.MasterKeyFile)
	add("master-key", err == nil, false, cfg.MasterKeyFile, "created on first use (mode 0600); supply your own 32-byte key there to control it")
	return out
}

// ensureSharedMount makes dir a mount point with shared propagation.
//
// Every container's mount namespace starts as a copy of the host's, so it
// holds copies of other instances' volume and overlay mounts, which would
// keep their filesystems (and fscrypt keys) alive after the host unmounts
// them. nspawn turns its namespace into a slave of the host's: when the
// instance mounts live in a shared peer group, the host's unmounts
// propagate into those copies and the filesystems really go away.
func ensureSharedMount(dir string) error {
	mounted, shared, err := mountState(dir)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("local: bind mount %s: %w", dir, err)
		}
	}
	if !shared {
		if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
			return fmt.Errorf("local: make %s shared: %w", dir, err)
		}
	}
	return nil
}

// mountState reports whether dir is a mount point and whether the
// topmost mount there has shared propagation.
func mountState(dir string) (mounted, shared bool, err error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false, false, fmt.Errorf("local: %w", err)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, false, fmt.Errorf("local: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || unescapeMount(f[4]) != real {
			continue
		}
		mounted, shared = true, false
		for _, opt := range f[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") {
				shared = true
			}
		}
	}
	return mounted, shared, nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
