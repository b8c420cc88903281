package conformance

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance/internal/probe"
	"golang.org/x/crypto/ssh"
)

// execServer is an SSH server on loopback that runs exec requests with
// /bin/sh, enough to drive member's remote helpers against this machine as
// if it were an instance.
func execServer(t *testing.T, client ssh.PublicKey) *compute.Instance {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(nil)
	host, _ := ssh.NewSignerFromKey(hostPriv)
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(client.Marshal()) {
				return nil, nil
			}
			return nil, errString("unknown key")
		},
	}
	cfg.AddHostKey(host)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serveExec(c, cfg) })
		}
	})
	return &compute.Instance{ID: "i-loop", SSH: compute.SSHInfo{
		User: "root", Host: "127.0.0.1", Port: l.Addr().(*net.TCPAddr).Port,
		HostKeys: []compute.HostKey{compute.HostKeyOf(host.PublicKey())},
	}}
}

func serveExec(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, reqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for req := range reqs {
				if req.Type != "exec" || len(req.Payload) < 4 {
					req.Reply(false, nil)
					continue
				}
				n := binary.BigEndian.Uint32(req.Payload)
				cmd := exec.Command("/bin/sh", "-c", string(req.Payload[4:4+n]))
				cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
				stdin, _ := cmd.StdinPipe()
				req.Reply(true, nil)
				if err := cmd.Start(); err != nil {
					ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 127))
					return
				}
				go func() { io.Copy(stdin, ch); stdin.Close() }()
				code := 0
				if err := cmd.Wait(); err != nil {
					code = 1
					if ee, ok := err.(*exec.ExitError); ok {
						code = ee.ExitCode()
					}
				}
				ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(code)))
				return
			}
		}()
	}
}

// TestRemoteProbe copies this test binary over SSH, as the suite does with
// instances, and drives its probe modes: the package's init must turn it
// into the probe program.
func TestRemoteProbe(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	signer, _ := ssh.NewSignerFromKey(priv)
	inst := execServer(t, signer.PublicKey())
	cfg, err := sshConfig(inst, ssh.PublicKeys(signer))
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialSSH(t.Context(), inst.SSH.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := &member{key: "lo", inst: inst, addr: netip.MustParseAddr("127.0.0.1"), ssh: c}
	runID := randHex(4)
	if err := m.installProbe(t.Context(), runID); err != nil {
		t.Fatal(err)
	}
	defer m.exec(context.WithoutCancel(t.Context()), "rm -f "+m.probePath, nil)

	token := probe.NewToken()
	lp, _ := net.Listen("tcp", "127.0.0.1:0")
	port := uint16(lp.Addr().(*net.TCPAddr).Port)
	lp.Close()
	l, err := m.startListener(t.Context(), []uint16{port}, []uint16{port}, token)
	if err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	targets := []probe.Target{{Proto: "tcp", Addr: lo, Port: port}, {Proto: "udp", Addr: lo, Port: port}}
	res, err := m.dial(t.Context(), targets, token, probeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.Open || !r.Verified {
			t.Errorf("remote probe of its own listener: %+v", r)
		}
	}
	// The same listener seen from here, the "outside".
	for _, r := range probe.All(t.Context(), probe.Local{}, targets, token, probeTimeout) {
		if !r.Open || !r.Verified {
			t.Errorf("local probe of the remote listener: %+v", r)
		}
	}
	l.Close()
	// Closing the session ends the listener: the port closes once the
	// process has seen EOF on its stdin.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := probe.One(t.Context(), probe.Local{}, targets[0], token, probeTimeout)
		if !r.Open {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("listener still serving 10s after its session closed: %+v", r)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err := m.exec(t.Context(), "echo hi; echo err >&2; exit 3", nil)
	if err == nil || strings.TrimSpace(string(out)) != "hi" || !strings.Contains(err.Error(), "err") {
		t.Errorf("exec of a failing command = %q, %v", out, err)
	}
}
