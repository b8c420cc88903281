package aws

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/compute-sdk/compute"
)

// sshdConfig is the sshd drop-in every instance gets: the same policy as
// the local provider's image. sshd uses the first value it reads for each
// keyword and Debian's sshd_config includes sshd_config.d/*.conf first, so
// the "00-" file wins over anything later.
const sshdConfig = `# Written by compute at first boot.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthenticationMethods publickey
KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org
Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com
MACs hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com
HostKeyAlgorithms ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256
PubkeyAcceptedAlgorithms ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256
`

// defaultUser is the sudo user created on every instance (root gets the
// same keys).
const defaultUser = "admin"

// userData returns the base64 cloud-config for an instance: the spec's
// keys for root and the default user, no passwords, hardened sshd, fresh
// ed25519 and ecdsa host keys printed to the console (where GetInstance
// reads them), and nothing else.
func userData(hostname string, keys []string) string {
	var b strings.Builder
	b.WriteString("#cloud-config\n")
	fmt.Fprintf(&b, "hostname: %s\n", hostname)
	b.WriteString("ssh_pwauth: false\n")
	// cloud-init's default prepends a "use the default user" command to
	// root's keys; root login by key is part of the contract.
	b.WriteString("disable_root: false\n")
	b.WriteString("ssh_deletekeys: true\n")
	b.WriteString("ssh_genkeytypes: [ed25519, ecdsa]\n")
	b.WriteString("ssh_key_console_blacklist: []\n")
	b.WriteString("users:\n")
	fmt.Fprintf(&b, "  - name: %s\n", defaultUser)
	b.WriteString("    groups: [sudo]\n")
	b.WriteString("    shell: /bin/bash\n")
	b.WriteString("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n")
	b.WriteString("    lock_passwd: true\n")
	b.WriteString("    ssh_authorized_keys:\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "      - %q\n", strings.TrimSpace(k))
	}
	b.WriteString("write_files:\n")
	b.WriteString("  - path: /root/.ssh/authorized_keys\n")
	b.WriteString("    owner: root:root\n")
	b.WriteString("    permissions: \"0600\"\n")
	b.WriteString("    content: |\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "      %s\n", strings.TrimSpace(k))
	}
	b.WriteString("  - path: /etc/ssh/sshd_config.d/00-compute.conf\n")
	b.WriteString("    owner: root:root\n")
	b.WriteString("    permissions: \"0644\"\n")
	b.WriteString("    content: |\n")
	for _, l := range strings.Split(strings.TrimRight(sshdConfig, "\n"), "\n") {
		fmt.Fprintf(&b, "      %s\n", l)
	}
	// Remove RSA and DSA host keys an image may ship with, then restart
	// sshd so the drop-in applies to the first login too.
	b.WriteString("runcmd:\n")
	b.WriteString("  - [sh, -c, \"rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_dsa_key*; sshd -t && (systemctl restart ssh || systemctl restart sshd)\"]\n")
	return base64.StdEncoding.EncodeToString([]byte(b.String()))
}

const (
	hostKeysBegin = "-----BEGIN SSH HOST KEY KEYS-----"
	hostKeysEnd   = "-----END SSH HOST KEY KEYS-----"
)

// parseHostKeys reads the host keys cloud-init prints to the console. It
// uses the last complete block (a reboot may print it again) and returns
// nil until one is there. Key types compute does not accept for host
// verification (ssh-dss) are dropped.
func parseHostKeys(console string) []compute.HostKey {
	var last, cur []compute.HostKey
	in := false
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "ec2: ")
		// Serial consoles prefix lines with timestamps or "ec2: ".
		if i := strings.Index(line, "-----"); i > 0 {
			line = line[i:]
		}
		switch {
		case line == hostKeysBegin:
			in, cur = true, nil
		case line == hostKeysEnd:
			if in && len(cur) > 0 {
				last = cur
			}
			in = false
		case in:
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
			if err != nil {
				continue
			}
			switch pub.Type() {
			case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSA:
				cur = append(cur, compute.HostKeyOf(pub))
			}
		}
	}
	return last
}
