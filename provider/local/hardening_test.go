package local

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
	"github.com/compute-sdk/compute/provider/local/internal/network"
)

// TestLimitsAndSpoofing: forged source addresses are dropped (and
// counted) at the bridge port, a CPU burner is held to the type's quota,
// and a fork bomb stops at the pids limit while the instance survives.
func TestLimitsAndSpoofing(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	hostCIDR, _ := p.CallerPrefixes(ctx)
	rules := []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}
	i1 := create(t, p, compute.InstanceSpec{Name: "l1", SSHKeys: []string{key.auth}, Rules: rules})
	i2 := create(t, p, compute.InstanceSpec{Name: "l2", Cluster: "", SSHKeys: []string{key.auth},
		Rules: append(rules, compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.232.0.0/16")}})})
	r1, _ := p.st.instance(i1.ID)

	// Anti-spoofing: give l1's eth0 a second address from the host side
	// (root inside cannot), and connect from it.
	forged := r1.Subnet.Addr().As4()
	forged[3] = 200
	fa := netip.AddrFrom4(forged)
	nsName := testPrefix + "-i-" + hexID(i1.ID)
	sh(t, "ip", "-n", nsName, "addr", "add", fa.String()+"/24", "dev", "eth0")
	before, err := p.net.SpoofDrops(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Legit: l1's own address reaches l2:22 (l2 allows the pool).
	if !dialFrom(p, i1.ID, i1.Addresses[0], i2.Addresses[0], 22) {
		t.Error("l1 cannot reach l2:22 from its own address")
	}
	if dialFrom(p, i1.ID, fa, i2.Addresses[0], 22) {
		t.Error("a connection from a forged source address got through")
	}
	after, _ := p.net.SpoofDrops(ctx)
	if after <= before {
		t.Errorf("spoof drop counter %d -> %d", before, after)
	}
	exec.Command("ip", "-n", nsName, "addr", "del", fa.String()+"/24", "dev", "eth0").Run()

	// MAC spoofing: the right address from the wrong MAC is dropped too.
	sh(t, "ip", "-n", nsName, "link", "set", "eth0", "address", "02:00:00:00:00:99")
	before, _ = p.net.SpoofDrops(ctx)
	if dialFrom(p, i1.ID, i1.Addresses[0], i2.Addresses[0], 22) {
		t.Error("a connection from a forged MAC got through")
	}
	if after, _ := p.net.SpoofDrops(ctx); after <= before {
		t.Errorf("spoof drop counter %d -> %d for a forged MAC", before, after)
	}
	sh(t, "ip", "-n", nsName, "link", "set", "eth0", "address", macOf(i1.ID).String())
	exec.Command("ip", "-n", nsName, "neigh", "flush", "all").Run()
	if !dialFrom(p, i1.ID, i1.Addresses[0], i2.Addresses[0], 22) {
		t.Error("l1 cannot reach l2:22 after its MAC was restored")
	}

	c := mustSSH(t, i1, key)
	g := &cgroups.Group{Name: i1.ID, Paths: r1.CgroupPaths}
	if cgroups.Features().CPUAcct && cgroups.Features().CPU {
		// small = 1 vCPU; two busy loops may use one CPU's worth.
		s0, _ := g.Stats()
		start := time.Now()
		run(t, c, `for i in 1 2; do timeout 3 perl -e '1 while 1' & done; wait; true`)
		s1, _ := g.Stats()
		wall := time.Since(start)
		used := time.Duration(s1.CPUUsageNanos - s0.CPUUsageNanos)
		t.Logf("two busy loops: %v CPU in %v wall (%.2f CPUs)", used, wall, used.Seconds()/wall.Seconds())
		if used.Seconds()/wall.Seconds() > 1.25 {
			t.Errorf("CPU quota of 1 vCPU not enforced: %.2f CPUs", used.Seconds()/wall.Seconds())
		}
	}
	if cgroups.Features().PIDs {
		run(t, c, `systemd-run --unit=bomb -p RuntimeMaxSec=3 -p KillSignal=SIGKILL perl -e 'while (1) { fork }'`)
		time.Sleep(2 * time.Second)
		s, _ := g.Stats()
		if s.PIDsMaxEvents == 0 {
			t.Errorf("fork bomb never hit the pids limit (current %d, max %d)", s.PIDsCurrent, s.PIDsMax)
		}
		// Once systemd has stopped the bomb, the instance is fine and
		// reachable by SSH again.
		ok := false
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			c2, err := dialSSH(i1, "root", key)
			if err != nil {
				continue
			}
			out, _ := runErr(c2, "systemctl reset-failed bomb 2>/dev/null; systemctl is-system-running")
			c2.Close()
			if strings.HasSuffix(out, "running") {
				ok = true
				break
			}
		}
		if !ok {
			s, _ := g.Stats()
			t.Errorf("instance not reachable and running after the fork bomb (pids %d/%d)", s.PIDsCurrent, s.PIDsMax)
		}
	}
}

// dialFrom connects from inside instance id's namespace, from src, to
// dst:port, and reports whether the TCP handshake completed.
func dialFrom(p *Provider, id string, src, dst netip.Addr, port uint16) bool {
	ok := false
	network.InNetNS(p.net.InstanceNetNS(hexID(id)), func() error {
		d := net.Dialer{Timeout: 1500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.Dial("tcp", netip.AddrPortFrom(dst, port).String())
		if err == nil {
			ok = true
			c.Close()
		}
		return nil
	})
	return ok
}
