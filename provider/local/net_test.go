package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/network"
)

// Listeners started inside instances with perl (perl-base is in every
// Debian image): a TCP server that answers each connection's first line
// with "ok", and a UDP server that answers each datagram.
const (
	tcpEcho = `perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalAddr=>"0.0.0.0",LocalPort=>%d,Listen=>16,ReuseAddr=>1) or die $!; while($c=$s->accept){ $l=<$c>; print $c "ok\n"; close $c }'`
	udpEcho = `perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalAddr=>"0.0.0.0",LocalPort=>%d,Proto=>"udp") or die $!; while(1){ $a=$s->recv($m,1500); $s->send("ok\n",0,$a) }'`
	tcpSend = `perl -MIO::Socket::INET -e 'alarm 5; $c=IO::Socket::INET->new(PeerAddr=>"%s",PeerPort=>%d,Timeout=>3) or exit 1; print $c "%s\n"; $r=<$c>; exit 0'`
)

// startListener runs cmd as a transient unit in the instance.
func startListener(t *testing.T, c *ssh.Client, unit, cmd string) {
	t.Helper()
	run(t, c, fmt.Sprintf("systemd-run --unit=%s --service-type=simple %s", unit, shellQuote(cmd)))
	// Wait until it listens.
	for i := 0; i < 50; i++ {
		if out, _ := runErr(c, "systemctl is-active "+unit); out == "active" {
			time.Sleep(100 * time.Millisecond)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("listener %s did not start", unit)
}

func shellQuote(s string) string {
	return "sh -c '" + stringsReplaceAll(s, "'", `'\''`) + "'"
}

// nsDial returns a dial func from inside the network namespace of inst:
// packets come from inst's own address, as if the instance sent them.
func nsDial(p *Provider, id string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, nw, addr string) (c net.Conn, err error) {
		nerr := network.InNetNS(p.net.InstanceNetNS(hexID(id)), func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, nw, addr)
			return nil
		})
		if nerr != nil {
			return nil, nerr
		}
		return c, err
	}
}

// udpAnswered reports whether a datagram to addr:port gets an answer.
func udpAnswered(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr netip.Addr, port uint16) bool {
	ctx := context.Background()
	c, err := dial(ctx, "udp", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		return false
	}
	defer c.Close()
	buf := make([]byte, 16)
	for i := 0; i < 3; i++ {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// pingFrom reports whether an ICMP echo from inst's namespace to dst is
// answered.
func pingFrom(t *testing.T, p *Provider, id string, dst netip.Addr) bool {
	t.Helper()
	var pc *icmp.PacketConn
	if err := network.InNetNS(p.net.InstanceNetNS(hexID(id)), func() error {
		var err error
		pc, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatalf("icmp socket: %v", err)
	}
	defer pc.Close()
	echoID := int(time.Now().UnixNano() & 0xffff)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: echoID, Seq: 1, Data: []byte("compute")}}
	b, _ := msg.Marshal(nil)
	deadline := time.Now().Add(time.Second)
	if _, err := pc.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return false
	}
	pc.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			return false
		}
		m, err := icmp.ParseMessage(1, buf[:k])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == echoID && from.(*net.IPAddr).IP.Equal(dst.AsSlice()) {
			return true
		}
	}
	return false
}

// TestFirewallClustersEgressEncryption checks the security model end to
// end on real instances: default deny, a rule opening exactly one port to
// exactly its source, revoke, cluster peers on tcp/udp/icmp, cluster
// isolation, a cross-cluster rule, egress, and encryption at rest.
func TestFirewallClustersEgressEncryption(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	for _, c := range []string{"ca", "cb"} {
		if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: c}); err != nil {
			t.Fatal(err)
		}
	}
	hostCIDR, _ := p.CallerPrefixes(ctx)
	sshRule := compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}
	// Create the three in parallel, as users would.
	specs := []compute.InstanceSpec{
		{Name: "a1", Cluster: "ca", SSHKeys: []string{key.auth}, Rules: []compute.RuleSpec{sshRule}},
		{Name: "a2", Cluster: "ca", SSHKeys: []string{key.auth}, Rules: []compute.RuleSpec{sshRule}},
		{Name: "b1", Cluster: "cb", SSHKeys: []string{key.auth}, Rules: []compute.RuleSpec{sshRule}},
	}
	insts := make([]*compute.Instance, len(specs))
	done := make(chan int)
	for i := range specs {
		go func() { insts[i] = create(t, p, specs[i]); done <- i }()
	}
	for range specs {
		<-done
	}
	a1, a2, b1 := insts[0], insts[1], insts[2]
	if a1.Addresses[0] == b1.Addresses[0] || !netip.MustParsePrefix(a1.Addresses[0].String()+"/24").Masked().Contains(a2.Addresses[0]) {
		t.Fatalf("addresses a1 %v a2 %v b1 %v", a1.Addresses, a2.Addresses, b1.Addresses)
	}
	c1 := mustSSH(t, a1, key)
	startListener(t, c1, "tcp9000", fmt.Sprintf(tcpEcho, 9000))
	startListener(t, c1, "udp9001", fmt.Sprintf(udpEcho, 9001))
	addr := a1.Addresses[0]

	// Default deny from outside, port 22 aside (opened by the spec's rule).
	if tcpReachable(hostDial, addr, 9000) {
		t.Fatal("a1:9000 reachable from the host without a rule")
	}
	if udpAnswered(hostDial, addr, 9001) {
		t.Fatal("a1:9001/udp answered the host without a rule")
	}
	probe, err := p.AttachProbeHost(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()

	// A rule from the host's /32 opens exactly 9000 to exactly the host.
	r, err := p.AddRule(ctx, compute.InstanceTarget(a1.ID), compute.RuleSpec{Protocol: compute.ProtocolTCP, Ports: compute.Port(9000), SourceCIDRs: hostCIDR})
	if err != nil {
		t.Fatal(err)
	}
	if !tcpReachable(hostDial, addr, 9000) {
		t.Error("a1:9000 unreachable from the host after the rule")
	}
	if tcpReachable(probe.DialContext, addr, 9000) {
		t.Error("a1:9000 reachable from a probe host outside the rule's CIDR")
	}
	if udpAnswered(hostDial, addr, 9001) {
		t.Error("udp 9001 answered: the tcp rule opened udp")
	}
	if err := p.RevokeRule(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if tcpReachable(hostDial, addr, 9000) {
		t.Error("a1:9000 reachable from the host after revoke")
	}
	rs, err := p.ListRules(ctx, compute.InstanceTarget(a1.ID))
	if err != nil || len(rs) != 1 || rs[0].Ports != compute.Port(22) {
		t.Errorf("rules after revoke: %+v %v", rs, err)
	}

	// Cluster peers talk on everything; the other cluster reaches nothing.
	if !tcpReachable(nsDial(p, a2.ID), addr, 9000) || !udpAnswered(nsDial(p, a2.ID), addr, 9001) || !pingFrom(t, p, a2.ID, addr) {
		t.Error("a2 (same cluster) cannot reach a1 on tcp, udp or icmp")
	}
	if tcpReachable(nsDial(p, b1.ID), addr, 9000) || udpAnswered(nsDial(p, b1.ID), addr, 9001) || pingFrom(t, p, b1.ID, addr) {
		t.Error("b1 (other cluster) reaches a1")
	}
	if tcpReachable(nsDial(p, b1.ID), addr, 22) {
		t.Error("b1 reaches a1:22 (the ssh rule names only the host)")
	}
	// A cluster rule with a source cluster opens exactly that.
	if _, err := p.SetRules(ctx, compute.ClusterTarget("ca"), []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(9000), SourceClusters: []string{"cb"}}}); err != nil {
		t.Fatal(err)
	}
	if !tcpReachable(nsDial(p, b1.ID), addr, 9000) {
		t.Error("b1 cannot reach a1:9000 after the cluster rule from cb")
	}
	if udpAnswered(nsDial(p, b1.ID), addr, 9001) {
		t.Error("b1 reaches a1:9001/udp: the cluster rule opened more than tcp:9000")
	}
	if tcpReachable(hostDial, addr, 9000) {
		t.Error("the host reaches a1:9000 through a rule naming cluster cb")
	}
	if err := p.DeleteCluster(ctx, "cb"); err == nil {
		t.Error("deleted cluster cb while it has members and is a rule source")
	}
	if _, err := p.SetRules(ctx, compute.ClusterTarget("ca"), nil); err != nil {
		t.Fatal(err)
	}
	if tcpReachable(nsDial(p, b1.ID), addr, 9000) {
		t.Error("b1 still reaches a1:9000 after the cluster rules were cleared")
	}

	// Egress: a1 reaches a listener on the probe host.
	ln, err := probe.Listen(ctx, "tcp", ":7777")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 64)
		n, _ := c.Read(b)
		got <- string(bytes.TrimSpace(b[:n]))
		c.Write([]byte("ok\n"))
	}()
	if out, err := runErr(c1, fmt.Sprintf(tcpSend, probe.Addr(), 7777, "egress-a1")); err != nil {
		t.Errorf("egress from a1 failed: %v %s", err, out)
	}
	select {
	case m := <-got:
		if m != "egress-a1" {
			t.Errorf("probe got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Error("probe listener got nothing from a1")
	}

	// Encryption at rest: a marker written inside is not in the disk image.
	marker := fmt.Sprintf("compute-marker-%d", time.Now().UnixNano())
	run(t, c1, fmt.Sprintf("echo %s > /root/marker.txt && dd if=/root/marker.txt of=/root/marker.bin bs=4k conv=fsync 2>/dev/null && sync", marker))
	if got := run(t, c1, "cat /root/marker.txt"); got != marker {
		t.Fatalf("marker readback %q", got)
	}
	if n := countInSparseFile(t, p.diskImage(a1.ID), []byte(marker)); n != 0 {
		t.Errorf("marker found %d times in the raw disk image", n)
	}
	// Control: the same scan finds a string written in plain text to the
	// filesystem outside the encrypted directory.
	ctrl := []byte(fmt.Sprintf("compute-control-%d", time.Now().UnixNano()))
	if err := os.WriteFile(p.volDir(a1.ID)+"/control.txt", ctrl, 0o600); err != nil {
		t.Fatal(err)
	}
	syncFile(t, p.volDir(a1.ID)+"/control.txt")
	if n := countInSparseFile(t, p.diskImage(a1.ID), ctrl); n == 0 {
		t.Error("control string not found in the raw image: the scan cannot see file data")
	}
	os.Remove(p.volDir(a1.ID) + "/control.txt")
}

func syncFile(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Sync()
	unix.Syncfs(int(f.Fd()))
}

// countInSparseFile counts occurrences of needle in the data extents of a
// sparse file (holes read as zeros and cannot contain it).
func countInSparseFile(t *testing.T, path string, needle []byte) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	size := fi.Size()
	fd := int(f.Fd())
	count := 0
	var off int64
	buf := make([]byte, 4<<20)
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			break // no more data
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		// Overlap chunks by len(needle) so matches across chunk edges count.
		for pos := data; pos < hole; pos += int64(len(buf) - len(needle)) {
			n, err := f.ReadAt(buf, pos)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			end := min(int64(n), hole-pos)
			count += bytes.Count(buf[:end], needle)
			if pos+end >= hole {
				break
			}
		}
		off = hole
	}
	return count
}

// TestPingInside: processes inside an instance can ping a cluster peer
// (ping sockets; raw sockets need a capability they do not have).
func TestPingInside(t *testing.T) {
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "pg"}); err != nil {
		t.Fatal(err)
	}
	hostCIDR, _ := p.CallerPrefixes(ctx)
	rules := []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}
	a := create(t, p, compute.InstanceSpec{Name: "pa", Cluster: "pg", SSHKeys: []string{key.auth}, Rules: rules})
	b := create(t, p, compute.InstanceSpec{Name: "pb", Cluster: "pg", SSHKeys: []string{key.auth}})
	c := mustSSH(t, a, key)
	// perl-base has Socket: open SOCK_DGRAM/IPPROTO_ICMP and send an echo.
	script := `use Socket; socket(S, PF_INET, SOCK_DGRAM, 1) or die "socket: $!"; $p = pack("CCnnn", 8, 0, 0, 0, 1) . "compute"; send(S, $p, 0, sockaddr_in(0, inet_aton("%s"))) or die "send: $!"; $r = ""; $rin = ""; vec($rin, fileno(S), 1) = 1; select($rin, undef, undef, 2) or die "timeout"; recv(S, $r, 100, 0); print unpack("C", $r)`
	out, err := runErr(c, fmt.Sprintf("perl -e '%s'", fmt.Sprintf(script, b.Addresses[0])))
	if err != nil || out != "0" {
		t.Errorf("ping from inside a to b: %v %q (want echo reply type 0)", err, out)
	}
}

// TestDNATInsideStaysClosed: the Docker case. A port published by a DNAT
// rule in the instance's namespace (added from the host side: root inside
// has no CAP_NET_ADMIN to add it) is unreachable from outside, because the
// router filters on the published port before the instance sees it; a
// cluster peer (allowed everything) reaches it, proving the DNAT works.
func TestDNATInsideStaysClosed(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		requireTool(t, "nft (apt-get install nftables)")
	}
	p := newTestProvider(t)
	ctx := context.Background()
	key := newTestKey(t)
	if _, err := p.CreateCluster(ctx, compute.ClusterSpec{Name: "dn"}); err != nil {
		t.Fatal(err)
	}
	hostCIDR, _ := p.CallerPrefixes(ctx)
	rules := []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}
	a := create(t, p, compute.InstanceSpec{Name: "da", Cluster: "dn", SSHKeys: []string{key.auth}, Rules: rules})
	b := create(t, p, compute.InstanceSpec{Name: "db", Cluster: "dn", SSHKeys: []string{key.auth}})
	c := mustSSH(t, a, key)
	startListener(t, c, "tcp9000", fmt.Sprintf(tcpEcho, 9000))
	if out, err := runErr(c, "ip link set eth0 mtu 1400"); err == nil {
		t.Errorf("root inside changed a link: %s", out)
	}
	ns := "/run/netns/" + testPrefix + "-i-" + hexID(a.ID)
	ruleset := "table ip docker {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n  tcp dport 8080 dnat to " + a.Addresses[0].String() + ":9000\n }\n}"
	cmd := exec.Command("nsenter", "--net="+ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("add DNAT: %v %s", err, out)
	}
	if !tcpReachable(nsDial(p, b.ID), a.Addresses[0], 8080) {
		t.Fatal("control: the cluster peer does not reach the DNAT-published port")
	}
	if tcpReachable(hostDial, a.Addresses[0], 8080) {
		t.Error("the DNAT-published port 8080 is reachable from the host without a rule")
	}
	probe, err := p.AttachProbeHost(ctx, "dn")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if tcpReachable(probe.DialContext, a.Addresses[0], 8080) {
		t.Error("the DNAT-published port 8080 is reachable from a probe host without a rule")
	}
}

func requireTool(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("COMPUTE_REQUIRE_INTEGRATION=1: needs %s", what)
	}
	t.Skip("needs " + what)
}
