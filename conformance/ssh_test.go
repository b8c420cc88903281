package conformance

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/compute-sdk/compute"
	"golang.org/x/crypto/ssh"
)

// sshServer runs an x/crypto/ssh server on loopback that accepts the given
// client key and offers the algorithms in algs (zero: library defaults).
func sshServer(t *testing.T, algs ssh.Config, client ssh.PublicKey) (*compute.Instance, string) {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(nil)
	host, _ := ssh.NewSignerFromKey(hostPriv)
	cfg := &ssh.ServerConfig{
		Config: algs,
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), client.Marshal()) {
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
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					return
				}
				defer sc.Close()
				go ssh.DiscardRequests(reqs)
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "no")
				}
			}()
		}
	}()
	addr := l.Addr().(*net.TCPAddr)
	inst := &compute.Instance{ID: "i-test", SSH: compute.SSHInfo{
		User: "root", Host: "127.0.0.1", Port: addr.Port,
		HostKeys: []compute.HostKey{compute.HostKeyOf(host.PublicKey())},
	}}
	return inst, addr.String()
}

func modern() ssh.Config {
	// SupportedAlgorithms still lists hmac-sha1.
	a := ssh.SupportedAlgorithms()
	return ssh.Config{KeyExchanges: a.KeyExchanges, Ciphers: a.Ciphers, MACs: slices.DeleteFunc(a.MACs, weakMAC)}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestKexInitAndWeakAlgorithms(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	signer, _ := ssh.NewSignerFromKey(priv)
	weak := ssh.Config{
		KeyExchanges: []string{ssh.KeyExchangeCurve25519, ssh.InsecureKeyExchangeDH14SHA1},
		Ciphers:      []string{ssh.CipherAES128GCM, ssh.CipherAES128CTR, ssh.InsecureCipherAES128CBC},
		MACs:         []string{ssh.HMACSHA256ETM, ssh.HMACSHA1},
	}
	for _, tc := range []struct {
		name     string
		algs     ssh.Config
		wantWeak []string
		// accepted are the weak-only probes the server lets through.
		accepted []string
	}{
		// x/crypto/ssh's own defaults include SHA-1 kex and MACs, so
		// "modern" has to be spelled out.
		{name: "modern", algs: modern(), wantWeak: nil},
		{
			name:     "library defaults",
			algs:     ssh.Config{},
			wantWeak: []string{"kex diffie-hellman-group14-sha1", "mac hmac-sha1", "mac hmac-sha1-96"},
			accepted: []string{"kex", "mac"},
		},
		{
			name:     "weak",
			algs:     weak,
			wantWeak: []string{"kex diffie-hellman-group14-sha1", "cipher aes128-cbc", "mac hmac-sha1"},
			accepted: []string{"kex", "cipher", "mac"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst, addr := sshServer(t, tc.algs, signer.PublicKey())
			k, err := readKexInit(t.Context(), addr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(k.HostKeys, ssh.KeyAlgoED25519) || len(k.CiphersCS) == 0 || len(k.MACsSC) == 0 {
				t.Fatalf("kexinit = %+v", k)
			}
			if got := k.weakOffers(); !slices.Equal(got, tc.wantWeak) {
				t.Errorf("weakOffers() = %q, want %q", got, tc.wantWeak)
			}
			// The handshake probes agree with the offer.
			var accepted []string
			for _, w := range weakProbes() {
				cfg, err := sshConfig(inst, ssh.PublicKeys(signer))
				if err != nil {
					t.Fatal(err)
				}
				w.tweak(cfg)
				c, err := dialSSH(t.Context(), addr, cfg)
				if err == nil {
					c.Close()
					accepted = append(accepted, strings.Fields(w.category)[0])
				}
			}
			if !slices.Equal(accepted, tc.accepted) {
				t.Errorf("weak-only handshakes accepted for %q, want %q", accepted, tc.accepted)
			}
		})
	}
}

func TestParseKexInitRejectsGarbage(t *testing.T) {
	for _, in := range []string{
		"",
		"SSH-1.5-old\r\n",
		"SSH-2.0-x\r\n\x00\x00\x00\x05\x02\x14\x00\x00\x00",
		"SSH-2.0-x\r\n\xff\xff\xff\xff\x04",
	} {
		if _, err := parseKexInit(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("parseKexInit(%q) succeeded", in)
		}
	}
}

func TestSSHConfigIsStrict(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	signer, _ := ssh.NewSignerFromKey(priv)
	inst, addr := sshServer(t, modern(), signer.PublicKey())
	cfg, err := sshConfig(inst, ssh.PublicKeys(signer))
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialSSH(t.Context(), addr, cfg)
	if err != nil {
		t.Fatalf("right host key: %v", err)
	}
	c.Close()

	other, _, _ := ed25519.GenerateKey(nil)
	otherPub, _ := ssh.NewPublicKey(other)
	wrong := *inst
	wrong.SSH.HostKeys = []compute.HostKey{compute.HostKeyOf(otherPub)}
	cfg, _ = sshConfig(&wrong, ssh.PublicKeys(signer))
	if c, err := dialSSH(t.Context(), addr, cfg); err == nil {
		c.Close()
		t.Fatal("connected with the wrong expected host key")
	}
	none := *inst
	none.SSH.HostKeys = nil
	if _, err := sshConfig(&none, ssh.PublicKeys(signer)); err == nil {
		t.Fatal("sshConfig accepted an instance without host keys")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := dialSSH(ctx, addr, cfg); err == nil {
		t.Fatal("dialSSH ignored a cancelled context")
	}
}

func TestClientsTLS(t *testing.T) {
	if p := checkClientsTLS(t.Context(), []*http.Client{{}, nil}); len(p) != 0 {
		t.Errorf("default clients: %v", p)
	}
	lax := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS10, InsecureSkipVerify: true}}}
	p := checkClientsTLS(t.Context(), []*http.Client{{}, lax})
	if len(p) != 1 || !strings.Contains(p[0], "client 1 completed a request over TLS 1.1") {
		t.Errorf("lax client: problems %q, want one naming client 1", p)
	}
}
