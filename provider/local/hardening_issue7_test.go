package local

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
	"github.com/compute-sdk/compute/provider/local/internal/network"
)

// Issue 7's "Must show" tests use their own prefix and pool ("lh",
// 10.228.0.0/16) so they never share a router with the package's other
// tests.
const hardPrefix = "lh"

var hardPool = netip.MustParsePrefix("10.228.0.0/16")

// newHardProvider is newTestProvider on the "lh" prefix; the router, host
// link and cgroup parents of the prefix are removed after the provider's
// own cleanup (cleanups run last-registered first).
func newHardProvider(t *testing.T) *Provider {
	t.Helper()
	requireIntegration(t)
	t.Cleanup(func() {
		if n, err := network.New(network.Config{Prefix: hardPrefix, Pool: hardPool}); err == nil {
			n.Teardown(context.Background())
		}
		cgroups.RemovePrefix("compute-" + hardPrefix)
	})
	return newTestProvider(t, func(c *Config) { c.Prefix = hardPrefix; c.Pool = hardPool })
}

// TestHardeningMustShow proves each point of issue 7 against two instances
// of one cluster, reused by every subtest.
func TestHardeningMustShow(t *testing.T) {
	p := newHardProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "hard"}); err != nil {
		t.Fatal(err)
	}
	hostCIDR, _ := p.CallerPrefixes(ctx)
	rules := []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}
	i1 := create(t, p, compute.InstanceSpec{Name: "lh1", Cluster: "hard", SSHKeys: []string{key.auth}, Rules: rules})
	i2 := create(t, p, compute.InstanceSpec{Name: "lh2", Cluster: "hard", SSHKeys: []string{key.auth}, Rules: rules})
	r1, err := p.st.instance(i1.ID)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := p.st.instance(i2.ID)
	c1 := mustSSH(t, i1, key)
	c2 := mustSSH(t, i2, key)
	g := &cgroups.Group{Name: i1.ID, Paths: r1.CgroupPaths}

	t.Run("uid-ranges", func(t *testing.T) {
		// Files made inside by root (uid 0) and by uid 1000 land in the
		// overlay's upper dir on the host as BASE+0 and BASE+1000 of each
		// instance's own range.
		for _, x := range []struct {
			name string
			id   string
			base uint32
			c    *ssh.Client
		}{{"lh1", i1.ID, r1.UIDBase, c1}, {"lh2", i2.ID, r2.UIDBase, c2}} {
			c := x.c
			run(t, c, "touch /root/lh-root /root/lh-user && chown 1000:1000 /root/lh-user && sync")
			for file, inside := range map[string]uint32{"lh-root": 0, "lh-user": 1000} {
				fi, err := os.Lstat(p.volDir(x.id) + "/data/upper/root/" + file)
				if err != nil {
					t.Fatalf("%s: %v", x.name, err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				if st.Uid == 0 || st.Uid != x.base+inside || st.Gid != x.base+inside {
					t.Errorf("%s: /root/%s (uid %d inside) is %d:%d on the host, want %d", x.name, file, inside, st.Uid, st.Gid, x.base+inside)
				}
			}
			// The kernel's view agrees with the record.
			want := []string{"0", strconv.FormatUint(uint64(x.base), 10), "65536"}
			if got := strings.Fields(run(t, c, "cat /proc/1/uid_map")); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("%s: uid_map of PID 1 %v, want %v", x.name, got, want)
			}
		}
		if r1.UIDBase == 0 || r2.UIDBase == 0 ||
			(r1.UIDBase < r2.UIDBase+65536 && r2.UIDBase < r1.UIDBase+65536) {
			t.Errorf("id ranges [%d,+65536) and [%d,+65536) overlap or are missing", r1.UIDBase, r2.UIDBase)
		}
	})

	t.Run("no-network-changes", func(t *testing.T) {
		other := r1.Subnet.Addr().As4()
		other[3] = 199
		for _, cmd := range []string{
			"ip addr add " + netip.AddrFrom4(other).String() + "/24 dev eth0",
			"ip route add 10.228.254.0/24 dev eth0",
			"ip link set eth0 down",
			"ip link set eth0 address 02:00:00:00:00:99",
			"ip link add lhdummy0 type dummy",
		} {
			out, err := runErr(c1, cmd)
			if err == nil || !strings.Contains(out, "Operation not permitted") {
				t.Errorf("root inside ran %q: err %v, output %q (want Operation not permitted)", cmd, err, out)
			}
		}
		// And nothing changed: still exactly one IPv4 address, its own.
		if got := run(t, c1, "ip -4 -o addr show dev eth0 | awk '{print $4}'"); got != i1.Addresses[0].String()+"/"+strconv.Itoa(r1.Subnet.Bits()) {
			t.Errorf("eth0 addresses after the attempts: %q", got)
		}
	})

	t.Run("cgroup-limits-fixed", func(t *testing.T) {
		before, err := g.Limits()
		if err != nil {
			t.Fatal(err)
		}
		f := cgroups.Features()
		type attempt struct {
			feature     bool
			file, value string
		}
		for _, a := range []attempt{
			{f.Memory, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "8G"},
			{f.Memory, "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "-1"},
			{f.CPU, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1"},
			{f.PIDs, "/sys/fs/cgroup/pids/pids.max", "max"},
		} {
			if !a.feature {
				continue
			}
			if _, err := runErr(c1, "test -e "+a.file); err != nil {
				if strings.Contains(a.file, "memsw") {
					continue // no swap accounting on this kernel
				}
				t.Errorf("%s is not visible inside: the attempt would prove nothing", a.file)
				continue
			}
			out, err := runErr(c1, "echo "+a.value+" > "+a.file)
			if err == nil || !(strings.Contains(out, "Permission denied") || strings.Contains(out, "Read-only")) {
				t.Errorf("root inside wrote %s to %s: err %v, output %q", a.value, a.file, err, out)
			}
		}
		// Escaping to a parent or making a child to move into is refused too.
		if out, err := runErr(c1, "echo $$ > /sys/fs/cgroup/pids/../cgroup.procs"); err == nil {
			t.Errorf("root inside moved itself out of its pids cgroup: %q", out)
		}
		after, err := g.Limits()
		if err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Errorf("host limits changed: %+v -> %+v", before, after)
		}
		t.Logf("host limits of %s: %+v", i1.ID, after)
	})

	t.Run("io_uring", func(t *testing.T) {
		// On the host, io_uring_setup(1, NULL) fails with EFAULT (the
		// syscall exists and reads its params); inside, the filter answers
		// EPERM before the kernel looks at the arguments.
		_, _, host := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, 0, 0)
		if host == unix.EPERM || host == unix.ENOSYS {
			t.Logf("host io_uring_setup errno %v: the comparison is weaker", host)
		}
		got := run(t, c1, `perl -e 'syscall(`+strconv.Itoa(unix.SYS_IO_URING_SETUP)+`, 1, 0); print $!+0'`)
		if got != strconv.Itoa(int(unix.EPERM)) {
			t.Errorf("io_uring_setup inside: errno %s, want EPERM (host: %d %v)", got, host, host)
		}
		for _, nr := range []int{unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER} {
			if got := run(t, c1, `perl -e 'syscall(`+strconv.Itoa(nr)+`, -1, 0, 0, 0, 0, 0); print $!+0'`); got != "1" {
				t.Errorf("syscall %d inside: errno %s, want EPERM", nr, got)
			}
		}
	})

	t.Run("anti-spoofing", func(t *testing.T) {
		antiSpoofing(t, p, i1, i2, r1.Subnet, hostCIDR)
	})

	t.Run("memory", func(t *testing.T) {
		if !cgroups.Features().Memory {
			t.Skip("no v1 memory controller on this host")
		}
		s0, _ := g.Stats()
		// 1.5 GiB in a 1 GiB instance: the OOM killer takes perl.
		out, err := runErr(c1, `perl -e '$x = "x" x (1536*1024*1024); print length $x'`)
		if err == nil {
			t.Fatalf("allocating 1.5 GiB in a %d MiB instance succeeded: %s", s0.MemoryLimit>>20, out)
		}
		t.Logf("hog ended with %v", err)
		s1, _ := g.Stats()
		if s1.OOMKills <= s0.OOMKills {
			t.Errorf("oom_kill %d -> %d: the hog was not killed by the memory cgroup", s0.OOMKills, s1.OOMKills)
		}
		if s1.MemoryMaxUsage > s1.MemoryLimit {
			t.Errorf("max usage %d above the limit %d", s1.MemoryMaxUsage, s1.MemoryLimit)
		}
		t.Logf("memory: limit %d MiB, max usage %d MiB, failcnt %d, oom kills %d", s1.MemoryLimit>>20, s1.MemoryMaxUsage>>20, s1.MemoryFailcnt, s1.OOMKills)
		stillRunning(t, p, i1, key)
		// A full tmpfs cannot take the instance down either: its size is
		// capped below the memory limit.
		runErr(c1, "dd if=/dev/zero of=/dev/shm/lhfill bs=1M count=2048 2>/dev/null; dd if=/dev/zero of=/tmp/lhfill bs=1M count=2048 2>/dev/null")
		runErr(c1, "rm -f /dev/shm/lhfill /tmp/lhfill")
		stillRunning(t, p, i1, key)
	})

	t.Run("cpu-quota", func(t *testing.T) {
		f := cgroups.Features()
		if !f.CPU || !f.CPUAcct {
			t.Skip("no v1 cpu/cpuacct controllers on this host")
		}
		l, _ := g.Limits()
		quota := float64(l.CPUQuotaMicros) / float64(l.CPUPeriodMicros)
		s0, _ := g.Stats()
		start := time.Now()
		// Two burners on a 2-CPU host: unlimited they would use ~2 CPUs.
		run(t, c1, `for i in 1 2; do timeout 3 sh -c 'while :; do :; done' & done; wait; true`)
		wall := time.Since(start)
		s1, _ := g.Stats()
		used := float64(s1.CPUUsageNanos-s0.CPUUsageNanos) / float64(wall.Nanoseconds())
		t.Logf("two burners: %.2f CPUs over %v (quota %.2f), throttled %d of %d periods",
			used, wall.Round(time.Millisecond), quota, s1.NrThrottled-s0.NrThrottled, s1.NrPeriods-s0.NrPeriods)
		if used > quota*1.15 {
			t.Errorf("burners used %.2f CPUs, quota %.2f", used, quota)
		}
		if used < quota*0.5 {
			t.Errorf("burners used only %.2f CPUs of a %.2f quota: the measurement proves nothing (busy host?)", used, quota)
		}
		if s1.NrThrottled <= s0.NrThrottled {
			t.Errorf("never throttled (%d -> %d)", s0.NrThrottled, s1.NrThrottled)
		}
	})

	t.Run("fork-bomb", func(t *testing.T) {
		if !cgroups.Features().PIDs {
			t.Skip("no v1 pids controller on this host")
		}
		s0, _ := g.Stats()
		// A bounded bomb of sleepers, as a unit so PID 1 can stop it
		// without forking: RuntimeMaxSec ends it even if no new session
		// can be opened meanwhile.
		run(t, c1, `systemd-run --unit=lhbomb -p RuntimeMaxSec=6 -p KillMode=control-group bash -c 'for i in $(seq 5000); do sleep 30 & done 2>/dev/null; wait'`)
		var peak cgroups.Stats
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			s, _ := g.Stats()
			if s.PIDsCurrent > peak.PIDsCurrent {
				peak = s
			}
			if s.PIDsMaxEvents > s0.PIDsMaxEvents {
				peak = s
				break
			}
		}
		t.Logf("fork bomb: pids.current peak %d, pids.max %d, refused forks %d", peak.PIDsCurrent, peak.PIDsMax, peak.PIDsMaxEvents-s0.PIDsMaxEvents)
		if peak.PIDsMaxEvents <= s0.PIDsMaxEvents {
			t.Errorf("the bomb never hit pids.max (%d)", peak.PIDsMax)
		}
		if peak.PIDsCurrent > peak.PIDsMax {
			t.Errorf("pids.current %d above pids.max %d", peak.PIDsCurrent, peak.PIDsMax)
		}
		stillRunning(t, p, i1, key)
		if c, err := dialSSH(i1, "root", key); err == nil {
			runErr(c, "systemctl stop lhbomb 2>/dev/null; systemctl reset-failed lhbomb 2>/dev/null")
			c.Close()
		}
		if s, _ := g.Stats(); s.PIDsCurrent > 100 {
			t.Errorf("%d processes left after the bomb was stopped", s.PIDsCurrent)
		}
	})
}

// stillRunning waits (up to 30 s) until a new SSH login to inst works and
// the instance's systemd reports running; it fails the test otherwise.
func stillRunning(t *testing.T, p *Provider, inst *compute.Instance, key testKey) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		c, err := dialSSH(inst, "root", key)
		if err != nil {
			last = err.Error()
			continue
		}
		out, _ := runErr(c, "systemctl reset-failed lhbomb 2>/dev/null; systemctl is-system-running")
		c.Close()
		if out == "running" {
			if got, err := p.GetInstance(context.Background(), inst.ID); err != nil || got.Status != compute.StatusRunning {
				t.Errorf("provider reports %v (%v)", got, err)
			}
			return
		}
		last = out
	}
	t.Errorf("%s not reachable and running: %s\n%s", inst.Name, last, consoleTail(p, inst.ID))
}

// countingListener accepts on ln (opened in some namespace) and counts
// the connections that arrive.
func countingListener(t *testing.T, ln net.Listener) *atomic.Int64 {
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return &n
}

// hardDial connects from inside instance id's namespace, from src, to
// dst:port, and reports whether the handshake completed.
func hardDial(p *Provider, id string, src, dst netip.Addr, port int) bool {
	ok := false
	network.InNetNS(p.net.InstanceNetNS(hexID(id)), func() error {
		d := net.Dialer{Timeout: 1200 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		if c, err := d.Dial("tcp", net.JoinHostPort(dst.String(), strconv.Itoa(port))); err == nil {
			ok = true
			c.Close()
		}
		return nil
	})
	return ok
}

// antiSpoofing: root inside cannot forge (see no-network-changes), so the
// forgery is injected from the host into i1's namespace: a second address,
// then a foreign MAC. Connections from them to a listener in i2 (same
// cluster: all ports open between members) and to one on the host must not
// arrive, and the bridge table's drop counter must rise.
func antiSpoofing(t *testing.T, p *Provider, i1, i2 *compute.Instance, subnet netip.Prefix, hostCIDR []netip.Prefix) {
	ctx := context.Background()
	ns := p.net.InstanceNetNS(hexID(i1.ID))
	var lnI2 net.Listener
	if err := network.InNetNS(p.net.InstanceNetNS(hexID(i2.ID)), func() (err error) {
		lnI2, err = net.Listen("tcp", net.JoinHostPort(i2.Addresses[0].String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	atI2 := countingListener(t, lnI2)
	portI2 := lnI2.Addr().(*net.TCPAddr).Port
	hostAddr := hostCIDR[0].Addr()
	lnHost, err := net.Listen("tcp", net.JoinHostPort(hostAddr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	atHost := countingListener(t, lnHost)
	portHost := lnHost.Addr().(*net.TCPAddr).Port

	// Control: from its own address and MAC, i1 reaches i2.
	if !hardDial(p, i1.ID, i1.Addresses[0], i2.Addresses[0], portI2) {
		t.Fatal("lh1 cannot reach lh2's listener from its own address: the spoofing checks would prove nothing")
	}
	legit := atI2.Load()

	ipCmd := func(args ...string) error {
		return exec.Command("ip", append([]string{"-n", nsName(ns)}, args...)...).Run()
	}
	forged := subnet.Addr().As4()
	forged[3] = 201
	fa := netip.AddrFrom4(forged)
	if out, err := exec.Command("ip", "-n", nsName(ns), "addr", "add", fa.String()+"/"+strconv.Itoa(subnet.Bits()), "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("add forged address: %v: %s", err, out)
	}
	defer ipCmd("addr", "del", fa.String()+"/"+strconv.Itoa(subnet.Bits()), "dev", "eth0")

	check := func(what string, src netip.Addr) {
		t.Helper()
		d0, err := p.net.SpoofDrops(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i0, h0 := atI2.Load(), atHost.Load()
		if hardDial(p, i1.ID, src, i2.Addresses[0], portI2) {
			t.Errorf("%s: connection to lh2 completed", what)
		}
		if hardDial(p, i1.ID, src, hostAddr, portHost) {
			t.Errorf("%s: connection to the host completed", what)
		}
		time.Sleep(200 * time.Millisecond)
		if n := atI2.Load() - i0; n > 0 {
			t.Errorf("%s: %d connections arrived at lh2", what, n)
		}
		if n := atHost.Load() - h0; n > 0 {
			t.Errorf("%s: %d connections arrived at the host", what, n)
		}
		d1, _ := p.net.SpoofDrops(ctx)
		t.Logf("%s: spoof drops %d -> %d", what, d0, d1)
		if d1 <= d0 {
			t.Errorf("%s: anti-spoofing drop counter did not rise (%d)", what, d0)
		}
	}
	check("forged source IP", fa)
	ipCmd("addr", "del", fa.String()+"/"+strconv.Itoa(subnet.Bits()), "dev", "eth0")

	mac := macOf(i1.ID).String()
	if out, err := exec.Command("ip", "-n", nsName(ns), "link", "set", "eth0", "address", "02:00:00:00:00:77").CombinedOutput(); err != nil {
		t.Fatalf("set forged MAC: %v: %s", err, out)
	}
	ipCmd("neigh", "flush", "all")
	check("forged MAC", i1.Addresses[0])
	if err := ipCmd("link", "set", "eth0", "address", mac); err != nil {
		t.Fatalf("restore MAC: %v", err)
	}
	ipCmd("neigh", "flush", "all")
	if !hardDial(p, i1.ID, i1.Addresses[0], i2.Addresses[0], portI2) || atI2.Load() <= legit {
		t.Error("lh1 cannot reach lh2 after its address and MAC were restored")
	}
}

// nsName is the name ip -n takes for a namespace path under /run/netns.
func nsName(path string) string { return path[strings.LastIndex(path, "/")+1:] }
