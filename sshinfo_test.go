package compute

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func newHostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestHostKeyCallback(t *testing.T) {
	listed, other := newHostKey(t), newHostKey(t)
	rsaPub, err := ssh.NewPublicKey(&rsaKey(t, 3072).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	info := SSHInfo{User: "root", Host: "10.199.0.2", Port: 22, HostKeys: []HostKey{HostKeyOf(listed), HostKeyOf(rsaPub)}}
	cb, err := info.HostKeyCallback()
	if err != nil {
		t.Fatal(err)
	}
	remote := &net.TCPAddr{IP: net.IPv4(10, 199, 0, 2), Port: 22}
	if err := cb(info.Addr(), remote, listed); err != nil {
		t.Errorf("listed key rejected: %v", err)
	}
	if err := cb(info.Addr(), remote, rsaPub); err != nil {
		t.Errorf("listed rsa key rejected: %v", err)
	}
	err = cb(info.Addr(), remote, other)
	if err == nil {
		t.Fatal("unlisted key accepted")
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(other)) {
		t.Errorf("error %q does not show the offending fingerprint", err)
	}

	// No host keys: refuse everything rather than trust on first use.
	cb, err = SSHInfo{Host: "h"}.HostKeyCallback()
	if err != nil {
		t.Fatal(err)
	}
	if cb("h:22", remote, listed) == nil {
		t.Error("empty HostKeys accepted a key")
	}

	// A fingerprint that does not match its key is an error up front.
	hk := HostKeyOf(listed)
	hk.Fingerprint = ssh.FingerprintSHA256(other)
	_, err = SSHInfo{HostKeys: []HostKey{hk}}.HostKeyCallback()
	wantField(t, err, "ssh.hostKeys[0].fingerprint")

	_, err = SSHInfo{HostKeys: []HostKey{HostKeyOf(listed), {PublicKey: "garbage"}}}.HostKeyCallback()
	wantField(t, err, "ssh.hostKeys[1]")
	if !errors.Is(err, ErrInvalidArgument) {
		t.Error("not ErrInvalidArgument")
	}
}

func TestHostKeyOf(t *testing.T) {
	k := newHostKey(t)
	hk := HostKeyOf(k)
	if hk.Type != ssh.KeyAlgoED25519 || !strings.HasPrefix(hk.Fingerprint, "SHA256:") || !strings.HasPrefix(hk.PublicKey, "ssh-ed25519 AAAA") {
		t.Errorf("HostKeyOf = %+v", hk)
	}
	if strings.ContainsAny(hk.PublicKey, "\n") {
		t.Error("PublicKey has a newline")
	}
}

func TestSSHInfoHelpers(t *testing.T) {
	k := newHostKey(t)
	rsaPub, _ := ssh.NewPublicKey(&rsaKey(t, 3072).PublicKey)
	cases := []struct {
		info  SSHInfo
		addr  string
		known string
	}{
		{SSHInfo{Host: "10.0.0.2", HostKeys: []HostKey{HostKeyOf(k)}}, "10.0.0.2:22", "10.0.0.2 " + HostKeyOf(k).PublicKey + "\n"},
		{SSHInfo{Host: "10.0.0.2", Port: 22, HostKeys: []HostKey{HostKeyOf(k)}}, "10.0.0.2:22", "10.0.0.2 " + HostKeyOf(k).PublicKey + "\n"},
		{SSHInfo{Host: "2001:db8::2", Port: 2222, HostKeys: []HostKey{HostKeyOf(k)}}, "[2001:db8::2]:2222", "[2001:db8::2]:2222 " + HostKeyOf(k).PublicKey + "\n"},
	}
	for _, tc := range cases {
		if got := tc.info.Addr(); got != tc.addr {
			t.Errorf("Addr() = %q, want %q", got, tc.addr)
		}
		if got := tc.info.KnownHosts(); got != tc.known {
			t.Errorf("KnownHosts() = %q, want %q", got, tc.known)
		}
	}
	algos := SSHInfo{HostKeys: []HostKey{HostKeyOf(k), HostKeyOf(rsaPub)}}.HostKeyAlgorithms()
	want := []string{ssh.KeyAlgoED25519, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	if strings.Join(algos, ",") != strings.Join(want, ",") {
		t.Errorf("HostKeyAlgorithms() = %v, want %v (never SHA-1 ssh-rsa)", algos, want)
	}
}
