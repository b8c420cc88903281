package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

// defaultKeyFiles are tried, in order, when create has no --ssh-key.
var defaultKeyFiles = []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"}

// readSSHKeys reads the public keys of each --ssh-key (a file, or - for
// stdin), or the first default key file in ~/.ssh. Every key is checked
// here, before any provider call.
func readSSHKeys(files []string, stdin io.Reader, home string) ([]string, error) {
	if len(files) == 0 {
		for _, name := range defaultKeyFiles {
			path := filepath.Join(home, ".ssh", name)
			if _, err := os.Stat(path); err == nil {
				files = []string{path}
				break
			}
		}
		if len(files) == 0 {
			return nil, compute.InvalidField("--ssh-key", "", fmt.Sprintf(
				"no key given and none of %s found in %s; pass --ssh-key FILE (or create one with ssh-keygen -t ed25519)",
				strings.Join(defaultKeyFiles, ", "), filepath.Join(home, ".ssh")))
		}
	}
	var keys []string
	stdinUsed := false
	for _, file := range files {
		var b []byte
		var err error
		if file == "-" {
			if stdinUsed {
				return nil, compute.InvalidField("--ssh-key", "-", "stdin can be read only once")
			}
			stdinUsed = true
			b, err = io.ReadAll(stdin)
		} else {
			b, err = os.ReadFile(file)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, compute.InvalidField("--ssh-key", file, "no such file")
		}
		if err != nil {
			return nil, compute.InvalidField("--ssh-key", file, err.Error())
		}
		if bytes.Contains(b, []byte("PRIVATE KEY-----")) {
			return nil, compute.InvalidField("--ssh-key", file, "is a private key; pass the public key ("+file+".pub)")
		}
		n := 0
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if _, _, err := compute.ParseSSHPublicKey(line); err != nil {
				return nil, compute.InvalidField("--ssh-key", file, err.Error())
			}
			keys = append(keys, line)
			n++
		}
		if n == 0 {
			return nil, compute.InvalidField("--ssh-key", file, "holds no public key")
		}
	}
	return keys, nil
}

// parseLabels reads k=v pairs.
func parseLabels(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	labels := map[string]string{}
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, compute.InvalidField("--label", kv, "must be key=value")
		}
		labels[k] = v
	}
	if err := compute.ValidateLabels("--label", labels); err != nil {
		return nil, err
	}
	return labels, nil
}

// parseRules parses and validates rules in the policy syntax, naming the
// flag and the rule that failed.
func parseRules(field string, texts []string) ([]compute.RuleSpec, error) {
	rules := make([]compute.RuleSpec, 0, len(texts))
	for _, text := range texts {
		r, err := parseRule(field, text)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func parseRule(field, text string) (compute.RuleSpec, error) {
	r, err := policy.Parse(text)
	if err == nil {
		err = policy.ValidateRule(r)
	}
	if err != nil {
		var fe *compute.FieldError
		if errors.As(err, &fe) {
			return compute.RuleSpec{}, compute.InvalidField(field, text, errorReason(fe))
		}
		return compute.RuleSpec{}, compute.InvalidField(field, text, err.Error())
	}
	return r, nil
}

func errorReason(fe *compute.FieldError) string {
	if fe.Value == "" || strings.Contains(fe.Reason, fe.Value) {
		return fe.Reason
	}
	return fmt.Sprintf("%q: %s", fe.Value, fe.Reason)
}

// readRuleFile reads one rule per line; blank lines and lines starting with
// # are skipped. "-" is stdin.
func readRuleFile(path string, stdin io.Reader) ([]string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, compute.InvalidField("--file", path, "no such file")
	}
	if err != nil {
		return nil, compute.InvalidField("--file", path, err.Error())
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, nil
}

// opensSSH reports whether any rule allows tcp/22.
func opensSSH(rules []compute.RuleSpec) bool {
	for _, r := range rules {
		if r.Protocol == compute.ProtocolAll || (r.Protocol == compute.ProtocolTCP && r.Ports.Contains(22)) {
			return true
		}
	}
	return false
}
