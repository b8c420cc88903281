package compute

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Addr returns host:port for dialing.
func (s SSHInfo) Addr() string {
	port := s.Port
	if port == 0 {
		port = 22
	}
	return net.JoinHostPort(s.Host, strconv.Itoa(port))
}

// HostKeyCallback returns a callback that accepts the server only if it
// presents one of s.HostKeys. It never trusts on first use: with no known
// host keys every connection is refused.
func (s SSHInfo) HostKeyCallback() (ssh.HostKeyCallback, error) {
	var keys []ssh.PublicKey
	for i, hk := range s.HostKeys {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hk.PublicKey))
		if err != nil {
			return nil, InvalidField(fmt.Sprintf("ssh.hostKeys[%d]", i), abbreviate(hk.PublicKey), err.Error())
		}
		if hk.Fingerprint != "" && ssh.FingerprintSHA256(pub) != hk.Fingerprint {
			return nil, InvalidField(fmt.Sprintf("ssh.hostKeys[%d].fingerprint", i), hk.Fingerprint, "does not match the public key")
		}
		keys = append(keys, pub)
	}
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		for _, k := range keys {
			if k.Type() == key.Type() && bytes.Equal(k.Marshal(), key.Marshal()) {
				return nil
			}
		}
		return fmt.Errorf("host key %s %s of %s is not one the provider reported", key.Type(), ssh.FingerprintSHA256(key), hostname)
	}, nil
}

// HostKeyAlgorithms returns the key types of s.HostKeys, to pass as
// ssh.ClientConfig.HostKeyAlgorithms so the server presents a key we know.
func (s SSHInfo) HostKeyAlgorithms() []string {
	var algos []string
	for _, hk := range s.HostKeys {
		switch hk.Type {
		case ssh.KeyAlgoRSA:
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
		default:
			algos = append(algos, hk.Type)
		}
	}
	return algos
}

// KnownHosts returns known_hosts lines for s, for OpenSSH clients.
func (s SSHInfo) KnownHosts() string {
	var b strings.Builder
	host := s.Host
	if s.Port != 0 && s.Port != 22 {
		host = "[" + s.Host + "]:" + strconv.Itoa(s.Port)
	}
	for _, hk := range s.HostKeys {
		fmt.Fprintf(&b, "%s %s\n", host, hk.PublicKey)
	}
	return b.String()
}
