package conformance

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// kexInit is the algorithm offer in a server's SSH_MSG_KEXINIT (RFC 4253
// section 7.1). The server sends it, unencrypted, right after the version
// exchange, so reading it shows everything sshd would agree to without
// having to negotiate each algorithm.
type kexInit struct {
	KeyExchanges []string
	HostKeys     []string
	CiphersCS    []string
	CiphersSC    []string
	MACsCS       []string
	MACsSC       []string
}

const msgKexInit = 20

// readKexInit connects to addr and returns the server's algorithm offer.
func readKexInit(ctx context.Context, addr string) (*kexInit, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "SSH-2.0-compute_conformance\r\n"); err != nil {
		return nil, err
	}
	return parseKexInit(bufio.NewReader(c))
}

// parseKexInit reads the server's identification line (skipping the
// banner lines a server may send before it) and its first packet.
func parseKexInit(r *bufio.Reader) (*kexInit, error) {
	for i := 0; ; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("reading server identification: %w", err)
		}
		if strings.HasPrefix(line, "SSH-") {
			if !strings.HasPrefix(line, "SSH-2.0-") && !strings.HasPrefix(line, "SSH-1.99-") {
				return nil, fmt.Errorf("server speaks %q, not SSH 2", strings.TrimSpace(line))
			}
			break
		}
		if i > 100 {
			return nil, errors.New("no SSH identification line")
		}
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading KEXINIT: %w", err)
	}
	length := binary.BigEndian.Uint32(hdr[:4])
	padding := uint32(hdr[4])
	if length < 1+padding || length > 64<<10 {
		return nil, fmt.Errorf("bad packet length %d", length)
	}
	body := make([]byte, length-1)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("reading KEXINIT: %w", err)
	}
	payload := body[:len(body)-int(padding)]
	if len(payload) < 17 || payload[0] != msgKexInit {
		return nil, fmt.Errorf("first packet is not KEXINIT")
	}
	rest := payload[17:] // message type and 16-byte cookie
	var lists [6][]string
	for i := range lists {
		if len(rest) < 4 {
			return nil, errors.New("truncated KEXINIT")
		}
		n := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if uint32(len(rest)) < n {
			return nil, errors.New("truncated KEXINIT")
		}
		if n > 0 {
			lists[i] = strings.Split(string(rest[:n]), ",")
		}
		rest = rest[n:]
	}
	return &kexInit{
		KeyExchanges: lists[0], HostKeys: lists[1],
		CiphersCS: lists[2], CiphersSC: lists[3],
		MACsCS: lists[4], MACsSC: lists[5],
	}, nil
}

// Weak algorithms, by category. Names are matched as written by OpenSSH.
func weakKex(a string) bool {
	// SHA-1 key exchanges (group1, group14, group-exchange) and anything
	// else on SHA-1.
	return strings.Contains(a, "sha1")
}

func weakHostKey(a string) bool {
	// "ssh-rsa" as a signature algorithm means RSA with SHA-1; the
	// rsa-sha2-* names are the safe ones. DSA is 1024-bit SHA-1.
	switch strings.TrimSuffix(a, "-cert-v01@openssh.com") {
	case "ssh-rsa", "ssh-dss":
		return true
	}
	return false
}

func weakCipher(a string) bool {
	return strings.Contains(a, "cbc") || strings.HasPrefix(a, "arcfour") || strings.Contains(a, "3des") ||
		strings.HasPrefix(a, "blowfish") || strings.HasPrefix(a, "cast128") || a == "none"
}

func weakMAC(a string) bool {
	return strings.Contains(a, "sha1") || strings.Contains(a, "md5") || a == "none"
}

// weakOffers lists the weak algorithms in k, as "category: name".
func (k *kexInit) weakOffers() []string {
	var weak []string
	add := func(cat string, list []string, isWeak func(string) bool) {
		for _, a := range list {
			if isWeak(a) {
				weak = append(weak, cat+" "+a)
			}
		}
	}
	add("kex", k.KeyExchanges, weakKex)
	add("host key", k.HostKeys, weakHostKey)
	add("cipher", append(append([]string(nil), k.CiphersCS...), k.CiphersSC...), weakCipher)
	add("mac", append(append([]string(nil), k.MACsCS...), k.MACsSC...), weakMAC)
	return dedup(weak)
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}
