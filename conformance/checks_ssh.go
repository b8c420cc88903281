package conformance

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"golang.org/x/crypto/ssh"
)

// forEachMember runs fn on every member concurrently and collects the
// problems it reports.
func (s *suite) forEachMember(fn func(m *member) []string) []string {
	out := make([][]string, len(s.members))
	var wg sync.WaitGroup
	for i, m := range s.members {
		wg.Go(func() { out[i] = fn(m) })
	}
	wg.Wait()
	return slices.Concat(out...)
}

func (s *suite) checkSSHClosed(ctx context.Context) outcome {
	if s.fw == nil {
		return unsupported("the provider's firewall is create-only (no compute.FirewallManager), so the suite's instances are created with SSH open to the caller")
	}
	var exps []expectation
	for _, m := range s.members {
		exps = append(exps, expectation{from: s.host(), to: m, proto: "tcp", port: 22, want: false})
		if ph, ok := s.probeHost(); ok {
			exps = append(exps, expectation{from: ph, to: m, proto: "tcp", port: 22, want: false})
		}
	}
	return failures(s.verify(ctx, 0, exps...), "port 22 closed on every instance before any rule: %s", describeExps(exps))
}

func (s *suite) checkSSHLogin(ctx context.Context) outcome {
	// A key the instances were not given must be refused, or "login
	// works" would prove nothing.
	_, stranger, _ := ed25519.GenerateKey(nil)
	strangerSigner, _ := ssh.NewSignerFromKey(stranger)
	problems := s.forEachMember(func(m *member) []string {
		if m.sshErr != nil {
			return []string{fmt.Sprintf("%s: %v", m.key, m.sshErr)}
		}
		var p []string
		for i, signer := range s.signers {
			cfg, err := sshConfig(m.inst, ssh.PublicKeys(signer))
			if err != nil {
				return []string{err.Error()}
			}
			c, err := dialSSH(ctx, m.inst.SSH.Addr(), cfg)
			if err != nil {
				p = append(p, fmt.Sprintf("%s: login with key %d: %v", m.key, i+1, err))
				continue
			}
			out, err := runOn(c, "echo conformance-ok")
			c.Close()
			if err != nil || strings.TrimSpace(out) != "conformance-ok" {
				p = append(p, fmt.Sprintf("%s: key %d: command did not run: %v %q", m.key, i+1, err, out))
			}
		}
		cfg, _ := sshConfig(m.inst, ssh.PublicKeys(strangerSigner))
		if c, err := dialSSH(ctx, m.inst.SSH.Addr(), cfg); err == nil {
			c.Close()
			p = append(p, fmt.Sprintf("%s: a key that was never injected logged in", m.key))
		}
		return p
	})
	return failures(problems, "both injected keys log in as %q on %d instances; a foreign key is refused", s.members[0].inst.SSH.User, len(s.members))
}

func runOn(c *ssh.Client, cmd string) (string, error) {
	sess, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	out, err := sess.Output(cmd)
	return string(out), err
}

func (s *suite) checkSSHHostKey(ctx context.Context) outcome {
	problems := s.forEachMember(func(m *member) []string {
		if len(m.inst.SSH.HostKeys) == 0 {
			return []string{m.key + ": the provider returned no host keys"}
		}
		var p []string
		for i, hk := range m.inst.SSH.HostKeys {
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hk.PublicKey))
			if err != nil {
				p = append(p, fmt.Sprintf("%s: host key %d unparsable: %v", m.key, i, err))
				continue
			}
			if got := ssh.FingerprintSHA256(pub); got != hk.Fingerprint {
				p = append(p, fmt.Sprintf("%s: host key %d fingerprint %q, computed %q", m.key, i, hk.Fingerprint, got))
			}
		}
		// The presented key must be one the API returned...
		var presented ssh.PublicKey
		cfg, err := sshConfig(m.inst, ssh.PublicKeys(s.signers[0]))
		if err != nil {
			return append(p, err.Error())
		}
		strict := cfg.HostKeyCallback
		cfg.HostKeyCallback = func(host string, remote net.Addr, key ssh.PublicKey) error {
			presented = key
			return strict(host, remote, key)
		}
		c, err := dialSSH(ctx, m.inst.SSH.Addr(), cfg)
		if err != nil {
			return append(p, fmt.Sprintf("%s: strict host key verification failed: %v", m.key, err))
		}
		c.Close()
		if presented == nil {
			return append(p, m.key+": no host key was presented")
		}
		// ...and a different key must be rejected: the client really
		// compares, it does not trust on first use.
		other, _, _ := ed25519.GenerateKey(nil)
		otherPub, _ := ssh.NewPublicKey(other)
		fake := *m.inst
		fake.SSH.HostKeys = []compute.HostKey{compute.HostKeyOf(otherPub)}
		fcfg, err := sshConfig(&fake, ssh.PublicKeys(s.signers[0]))
		if err != nil {
			return append(p, err.Error())
		}
		if c, err := dialSSH(ctx, m.inst.SSH.Addr(), fcfg); err == nil {
			c.Close()
			p = append(p, m.key+": connected although the expected host key was a different one")
		}
		return p
	})
	return failures(problems, "every instance presented a host key the API returned (strict check, a wrong expected key is refused)")
}

func (s *suite) checkSSHNoPassword(ctx context.Context) outcome {
	problems := s.forEachMember(func(m *member) []string {
		if m.sshErr != nil {
			return []string{fmt.Sprintf("%s: %v", m.key, m.sshErr)}
		}
		users := []string{m.inst.SSH.User}
		if m.inst.SSH.User != "root" {
			users = append(users, "root")
		}
		var p []string
		for _, user := range users {
			var askedPassword, askedKbd bool
			cfg, err := sshConfig(m.inst,
				ssh.PasswordCallback(func() (string, error) {
					askedPassword = true
					return "conformance-wrong-password", nil
				}),
				ssh.KeyboardInteractive(func(name, instruction string, questions []string, echos []bool) ([]string, error) {
					askedKbd = true
					answers := make([]string, len(questions))
					for i := range answers {
						answers[i] = "conformance-wrong-password"
					}
					return answers, nil
				}),
			)
			if err != nil {
				return []string{err.Error()}
			}
			cfg.User = user
			c, err := dialSSH(ctx, m.inst.SSH.Addr(), cfg)
			if err == nil {
				c.Close()
				p = append(p, fmt.Sprintf("%s: user %s logged in with a wrong password", m.key, user))
				continue
			}
			if !strings.Contains(err.Error(), "unable to authenticate") {
				p = append(p, fmt.Sprintf("%s: user %s: unexpected error (want an authentication refusal): %v", m.key, user, err))
				continue
			}
			// The client only calls these when the server lists the
			// method, so a call means the server offers it.
			if askedPassword {
				p = append(p, fmt.Sprintf("%s: user %s: server offers password authentication", m.key, user))
			}
			if askedKbd {
				p = append(p, fmt.Sprintf("%s: user %s: server offers keyboard-interactive authentication", m.key, user))
			}
		}
		return p
	})
	return failures(problems, "password and keyboard-interactive refused and not even offered, for the SSH user and root")
}

// weakProbe is a client configuration offering only weak algorithms of one
// category.
type weakProbe struct {
	category string
	tweak    func(*ssh.ClientConfig)
}

func weakProbes() []weakProbe {
	ins := ssh.InsecureAlgorithms()
	var hostKeys []string
	for _, a := range ins.HostKeys {
		if weakHostKey(a) {
			hostKeys = append(hostKeys, a)
		}
	}
	return []weakProbe{
		{"kex " + strings.Join(ins.KeyExchanges, ","), func(c *ssh.ClientConfig) { c.KeyExchanges = ins.KeyExchanges }},
		{"host key " + strings.Join(hostKeys, ","), func(c *ssh.ClientConfig) { c.HostKeyAlgorithms = hostKeys }},
		{"cipher " + strings.Join(ins.Ciphers, ","), func(c *ssh.ClientConfig) { c.Ciphers = ins.Ciphers }},
		{"mac hmac-sha1,hmac-sha1-96", func(c *ssh.ClientConfig) {
			// MACs are only negotiated with a non-AEAD cipher.
			c.Ciphers = []string{ssh.CipherAES128CTR, ssh.CipherAES192CTR, ssh.CipherAES256CTR}
			c.MACs = []string{ssh.HMACSHA1, ssh.InsecureHMACSHA196}
		}},
	}
}

func (s *suite) checkSSHAlgorithms(ctx context.Context) outcome {
	problems := s.forEachMember(func(m *member) []string {
		if m.sshErr != nil {
			return []string{fmt.Sprintf("%s: %v", m.key, m.sshErr)}
		}
		var p []string
		kctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		k, err := readKexInit(kctx, m.inst.SSH.Addr())
		cancel()
		if err != nil {
			p = append(p, fmt.Sprintf("%s: reading the server's algorithm offer: %v", m.key, err))
		} else if weak := k.weakOffers(); len(weak) > 0 {
			p = append(p, fmt.Sprintf("%s: sshd offers weak algorithms: %s", m.key, strings.Join(weak, ", ")))
		}
		for _, w := range weakProbes() {
			cfg, err := sshConfig(m.inst, ssh.PublicKeys(s.signers[0]))
			if err != nil {
				return []string{err.Error()}
			}
			w.tweak(cfg)
			c, err := dialSSH(ctx, m.inst.SSH.Addr(), cfg)
			if err == nil {
				c.Close()
				p = append(p, fmt.Sprintf("%s: handshake succeeded offering only %s", m.key, w.category))
				continue
			}
			var ne *ssh.AlgorithmNegotiationError
			if !errors.As(err, &ne) && !strings.Contains(err.Error(), "handshake failed") {
				p = append(p, fmt.Sprintf("%s: offering only %s: unexpected error: %v", m.key, w.category, err))
			}
		}
		return p
	})
	return failures(problems, "no SHA-1 kex, ssh-rsa/dss signature, CBC/RC4/3DES cipher or SHA-1/MD5 MAC offered; handshakes offering only those fail")
}

func (s *suite) checkSystemd(ctx context.Context) outcome {
	problems := s.forEachMember(func(m *member) []string {
		if m.sshErr != nil {
			return []string{fmt.Sprintf("%s: %v", m.key, m.sshErr)}
		}
		out, err := m.exec(ctx, "timeout 120 systemctl is-system-running --wait", nil)
		state := strings.TrimSpace(string(out))
		if err == nil && state == "running" {
			return nil
		}
		failed, ferr := m.exec(ctx, "systemctl --failed --no-legend --plain --no-pager", nil)
		var units []string
		for _, line := range strings.Split(string(failed), "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				units = append(units, f[0])
			}
		}
		if ferr != nil {
			units = append(units, "(listing failed units: "+ferr.Error()+")")
		}
		if state == "" {
			state = fmt.Sprint(err)
		}
		return []string{fmt.Sprintf("%s: system is %q; failed units: %s", m.key, state, strings.Join(units, ", "))}
	})
	return failures(problems, "systemctl is-system-running is \"running\" on every instance")
}
