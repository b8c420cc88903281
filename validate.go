package compute

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// MinRSABits is the smallest RSA key accepted for SSH.
const MinRSABits = 3072

func isTransient(err error) bool { return errors.Is(err, ErrTransient) }

// ValidateName checks an instance or cluster name: 1-63 characters of
// [a-z0-9-], starting with a letter and not ending with '-'. Names become
// host names and parts of network object names, hence the strict alphabet.
func ValidateName(field, name string) error {
	if name == "" {
		return InvalidField(field, name, "must not be empty")
	}
	if len(name) > 63 {
		return InvalidField(field, name, "must be at most 63 characters")
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z':
		case (r >= '0' && r <= '9') || r == '-':
			if i == 0 {
				return InvalidField(field, name, "must start with a lowercase letter")
			}
		default:
			return InvalidField(field, name, "may contain only lowercase letters, digits and '-'")
		}
	}
	if strings.HasSuffix(name, "-") {
		return InvalidField(field, name, "must not end with '-'")
	}
	return nil
}

// ValidateLabels checks label keys and values: keys 1-63 characters of
// [A-Za-z0-9._/-], values at most 255 characters with no control characters.
func ValidateLabels(field string, labels map[string]string) error {
	for k, v := range labels {
		if k == "" || len(k) > 63 {
			return InvalidField(field, k, "label keys must be 1-63 characters")
		}
		for _, r := range k {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._/-", r)) {
				return InvalidField(field, k, "label keys may contain only letters, digits and . _ / -")
			}
		}
		if len(v) > 255 {
			return InvalidField(field+"."+k, v, "label values must be at most 255 characters")
		}
		for _, r := range v {
			if r < 0x20 || r == 0x7f {
				return InvalidField(field+"."+k, v, "label values must not contain control characters")
			}
		}
	}
	return nil
}

// ParseSSHPublicKey parses one authorized_keys line and checks that its
// algorithm is accepted: ssh-ed25519, ecdsa-sha2-nistp256/384/521, or
// ssh-rsa of at least MinRSABits bits. Options before the key are rejected:
// access restrictions belong in firewall rules, where they are enforced
// outside the instance.
func ParseSSHPublicKey(line string) (ssh.PublicKey, string, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, "", errors.New("empty key")
	}
	pub, comment, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, "", fmt.Errorf("not an authorized_keys line: %v", err)
	}
	if len(options) > 0 {
		return nil, "", errors.New("key options are not accepted")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, "", errors.New("exactly one key per entry")
	}
	switch pub.Type() {
	case ssh.KeyAlgoED25519:
	case ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521:
		ck, ok := pub.(ssh.CryptoPublicKey)
		if !ok {
			return nil, "", errors.New("unreadable ecdsa key")
		}
		if _, ok := ck.CryptoPublicKey().(*ecdsa.PublicKey); !ok {
			return nil, "", errors.New("unreadable ecdsa key")
		}
	case ssh.KeyAlgoRSA:
		ck, ok := pub.(ssh.CryptoPublicKey)
		if !ok {
			return nil, "", errors.New("unreadable rsa key")
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok {
			return nil, "", errors.New("unreadable rsa key")
		}
		if bits := rk.N.BitLen(); bits < MinRSABits {
			return nil, "", fmt.Errorf("rsa key has %d bits; at least %d are required", bits, MinRSABits)
		}
	default:
		return nil, "", fmt.Errorf("key type %s is not accepted (use ssh-ed25519, ecdsa, or rsa >= %d bits)", pub.Type(), MinRSABits)
	}
	return pub, comment, nil
}

// ValidateSSHKeys checks a non-empty list of authorized_keys lines.
func ValidateSSHKeys(field string, keys []string) error {
	if len(keys) == 0 {
		return InvalidField(field, "", "at least one SSH public key is required")
	}
	for i, k := range keys {
		if _, _, err := ParseSSHPublicKey(k); err != nil {
			return InvalidField(fmt.Sprintf("%s[%d]", field, i), abbreviate(k), err.Error())
		}
	}
	return nil
}

func abbreviate(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// Validate checks every field of the spec except Rules, whose validation
// belongs to package policy (policy.ValidateInstanceSpec checks both).
func (s InstanceSpec) Validate() error {
	if err := ValidateName("name", s.Name); err != nil {
		return err
	}
	if len(s.RefID) > 128 {
		return InvalidField("refId", abbreviate(s.RefID), "must be at most 128 characters")
	}
	for _, r := range s.RefID {
		if r < 0x21 || r == 0x7f {
			return InvalidField("refId", s.RefID, "must be printable with no spaces")
		}
	}
	if s.Cluster != "" {
		if err := ValidateName("cluster", s.Cluster); err != nil {
			return err
		}
	}
	if err := ValidateSSHKeys("sshKeys", s.SSHKeys); err != nil {
		return err
	}
	return ValidateLabels("labels", s.Labels)
}

// Validate checks the cluster spec.
func (s ClusterSpec) Validate() error {
	if err := ValidateName("name", s.Name); err != nil {
		return err
	}
	return ValidateLabels("labels", s.Labels)
}

// IdempotencyKey returns RefID, or Name when RefID is empty.
func (s InstanceSpec) IdempotencyKey() string {
	if s.RefID != "" {
		return s.RefID
	}
	return s.Name
}

// HostKeyOf returns the HostKey description of pub.
func HostKeyOf(pub ssh.PublicKey) HostKey {
	return HostKey{
		Type:        pub.Type(),
		PublicKey:   strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))),
		Fingerprint: ssh.FingerprintSHA256(pub),
	}
}
