package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/compute-sdk/compute"
	"golang.org/x/crypto/ssh"
)

func TestSSHRunsOpenSSHWithStrictHostKeys(t *testing.T) {
	e := newTestEnv(t)
	inst := e.mustCreate("web")
	state := t.TempDir()
	e.env["XDG_STATE_HOME"] = state
	e.execCode = 7
	r := e.run("ssh", "web", "--", "echo", "-n", "hi")
	// The remote status is passed on, and nothing is printed over ssh's own
	// messages.
	if r.code != 7 || r.stderr != "" {
		t.Errorf("exit %d stderr %q, want 7 and nothing", r.code, r.stderr)
	}
	kh := filepath.Join(state, "compute", "known_hosts.d", inst.ID)
	want := []string{"/usr/bin/ssh",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + kh,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "KnownHostsCommand=none",
		"-o", "UpdateHostKeys=no",
		"-o", "CheckHostIP=no",
		"-o", "VerifyHostKeyDNS=no",
		"-o", "HostKeyAlgorithms=ssh-ed25519",
		"-o", "PasswordAuthentication=no",
		"-o", "KbdInteractiveAuthentication=no",
		"-o", "ConnectTimeout=30",
		"-p", "22", "-l", "root", "--", inst.SSH.Host, "echo", "-n", "hi"}
	if len(e.execs) != 1 || !slices.Equal(e.execs[0], want) {
		t.Errorf("started %q\nwant\n%q", e.execs, want)
	}
	b, err := os.ReadFile(kh)
	must(t, err)
	if string(b) != inst.SSH.KnownHosts() || !strings.HasPrefix(string(b), inst.SSH.Host+" ssh-ed25519 ") {
		t.Errorf("known_hosts = %q, want %q", b, inst.SSH.KnownHosts())
	}
	if fi, _ := os.Stat(filepath.Dir(kh)); fi.Mode().Perm() != 0o700 {
		t.Errorf("known_hosts.d mode %v", fi.Mode())
	}

	// 255 is OpenSSH's own failure: one line pointing at the rules.
	e.execCode = 255
	r = e.run("ssh", "web")
	if r.code != 255 {
		t.Errorf("ssh failure: exit %d, want 255", r.code)
	}
	oneLineError(t, r, "is tcp:22 open to this host")
	e.execs = e.execs[:1]

	r = e.run("ssh", "--print", "-l", "admin", "-i", "/dev/null", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "StrictHostKeyChecking=yes") || !strings.Contains(r.stdout, "-l admin") ||
		!strings.Contains(r.stdout, "-i /dev/null -o IdentitiesOnly=yes") {
		t.Errorf("ssh --print: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if len(e.execs) != 1 {
		t.Errorf("ssh --print started a program: %q", e.execs[1:])
	}
}

func TestSSHRefusesWithoutHostKeys(t *testing.T) {
	e := newTestEnv(t)
	e.mustCreate("web")
	e.useProvider(noHostKeys{e.fake})
	e.env["XDG_STATE_HOME"] = t.TempDir()
	r := e.run("ssh", "--print", "web")
	if r.code != ExitError {
		t.Errorf("exit %d, want %d", r.code, ExitError)
	}
	oneLineError(t, r, "no SSH host key")
	if _, err := os.Stat(filepath.Join(e.env["XDG_STATE_HOME"], "compute", "known_hosts.d")); err == nil {
		t.Error("known_hosts written for an instance without host keys")
	}
}

// noHostKeys hides the host keys of every instance.
type noHostKeys struct{ compute.Provider }

func (p noHostKeys) GetInstance(ctx context.Context, id string) (*compute.Instance, error) {
	inst, err := p.Provider.GetInstance(ctx, id)
	if inst != nil {
		inst.SSH.HostKeys = nil
	}
	return inst, err
}

// TestNativeSSHVerifiesHostKey runs the built-in client (used when there is
// no ssh binary) against an in-process SSH server on loopback: it runs the
// command when the server shows the reported key, and refuses a server with
// any other key.
func TestNativeSSHVerifiesHostKey(t *testing.T) {
	_, userPriv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	userSigner, err := ssh.NewSignerFromKey(userPriv)
	must(t, err)
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	must(t, err)
	_, otherPriv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	otherSigner, err := ssh.NewSignerFromKey(otherPriv)
	must(t, err)

	for _, tc := range []struct {
		name       string
		serverKey  ssh.Signer
		wantCode   int
		wantErr    string
		wantRanCmd bool
	}{
		{"reported key", hostSigner, 3, "", true},
		{"other key", otherSigner, ExitError, "is not one the provider reported", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startSSHServer(t, tc.serverKey, userSigner.PublicKey())
			home := t.TempDir()
			must(t, os.MkdirAll(filepath.Join(home, ".ssh"), 0o700))
			pemBytes, err := ssh.MarshalPrivateKey(userPriv, "")
			must(t, err)
			must(t, os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), pem.EncodeToMemory(pemBytes), 0o600))

			addr := netip.MustParseAddrPort(srv.addr)
			info := compute.SSHInfo{User: "root", Host: addr.Addr().String(), Port: int(addr.Port()),
				HostKeys: []compute.HostKey{compute.HostKeyOf(hostSigner.PublicKey())}}
			ios, _, out, _ := Test()
			opts := &SSHOptions{IO: ios, HomeDir: func() string { return home }, Getenv: func(string) string { return "" },
				Command: []string{"exit", "3"}}
			err = nativeSSH(context.Background(), opts, info)
			if got := ExitCode(err); got != tc.wantCode {
				t.Errorf("exit code %d (err %v), want %d", got, err, tc.wantCode)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
			if ran := srv.ran(); (ran == "exit 3") != tc.wantRanCmd {
				t.Errorf("server ran %q, want ran=%v", ran, tc.wantRanCmd)
			}
			if tc.wantRanCmd && out.String() != "ran: exit 3\n" {
				t.Errorf("stdout = %q", out.String())
			}
		})
	}
}

type sshServer struct {
	addr string
	mu   sync.Mutex
	cmd  string
}

func (s *sshServer) ran() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd
}

// startSSHServer serves one exec session: it echoes the command and exits
// with the number after "exit ".
func startSSHServer(t *testing.T, hostKey ssh.Signer, user ssh.PublicKey) *sshServer {
	t.Helper()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(user.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	s := &sshServer{addr: ln.Addr().String()}
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_, chans, reqs, err := ssh.NewServerConn(conn, cfg)
		if err != nil {
			return
		}
		go ssh.DiscardRequests(reqs)
		for nc := range chans {
			ch, creqs, err := nc.Accept()
			if err != nil {
				return
			}
			for req := range creqs {
				if req.Type != "exec" {
					req.Reply(false, nil)
					continue
				}
				var p struct{ Command string }
				ssh.Unmarshal(req.Payload, &p)
				s.mu.Lock()
				s.cmd = p.Command
				s.mu.Unlock()
				req.Reply(true, nil)
				io.WriteString(ch, "ran: "+p.Command+"\n")
				code, _ := strconv.Atoi(strings.TrimPrefix(p.Command, "exit "))
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
				ch.Close()
			}
		}
	}()
	return s
}

func TestResolveAmbiguousName(t *testing.T) {
	e := newTestEnv(t)
	a := e.mustCreate("web")
	b := e.mustCreate("other")
	p := dupNames{e.fake}
	_, err := resolveInstance(context.Background(), p, "web")
	if ExitCode(err) != ExitUsage || err == nil || !strings.Contains(err.Error(), a.ID) || !strings.Contains(err.Error(), b.ID) {
		t.Errorf("ambiguous name: %v, want a usage error listing %s and %s", err, a.ID, b.ID)
	}
	// An exact ID still resolves.
	got, err := resolveInstance(context.Background(), p, b.ID)
	if err != nil || got.ID != b.ID {
		t.Errorf("by ID: %v %v", got, err)
	}
}

// dupNames lists every instance under the name "web", as a provider
// without unique names could.
type dupNames struct{ compute.Provider }

func (p dupNames) ListInstances(ctx context.Context, o compute.ListOptions) ([]*compute.Instance, error) {
	list, err := p.Provider.ListInstances(ctx, o)
	for _, i := range list {
		i.Name = "web"
	}
	return list, err
}
