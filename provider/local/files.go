package local

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/image"
)

// hostKey is a freshly generated ed25519 SSH host key.
type hostKey struct {
	private []byte // OpenSSH PEM
	public  []byte // authorized_keys line
	info    compute.HostKey
}

func newHostKey(comment string) (*hostKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	spub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub))) + " " + comment + "\n"
	return &hostKey{private: pem.EncodeToMemory(block), public: []byte(line), info: compute.HostKeyOf(spub)}, nil
}

// instanceFiles is what the host writes into a new instance's root before
// its first boot.
type instanceFiles struct {
	hostname string
	sshKeys  []string
	hostKey  *hostKey
	// base is the host id that the instance's root maps to (0 without a
	// user namespace): files written here are owned by base+id so that
	// the instance's root (and user) own them.
	base uint32
	// memBytes bounds the tmpfs sizes set here.
	memBytes int64
}

// write writes the files into root (the mounted overlay). Paths are
// resolved inside the image we built, which has no symlinks on them.
func (f instanceFiles) write(root string) error {
	uid, gid, home, err := lookupUser(root, image.DefaultUser)
	if err != nil {
		return err
	}
	keys := strings.Join(f.sshKeys, "\n") + "\n"
	type file struct {
		path     string
		data     []byte
		mode     os.FileMode
		uid, gid uint32
	}
	files := []file{
		{"etc/hostname", []byte(f.hostname + "\n"), 0o644, 0, 0},
		{"etc/hosts", []byte("127.0.0.1\tlocalhost\n127.0.1.1\t" + f.hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"), 0o644, 0, 0},
		{"etc/ssh/ssh_host_ed25519_key", f.hostKey.private, 0o600, 0, 0},
		{"etc/ssh/ssh_host_ed25519_key.pub", f.hostKey.public, 0o644, 0, 0},
		{"root/.ssh/authorized_keys", []byte(keys), 0o600, 0, 0},
		{strings.TrimPrefix(home, "/") + "/.ssh/authorized_keys", []byte(keys), 0o600, uid, gid},
	}
	if f.memBytes > 0 {
		// logind's per-user runtime dirs are tmpfs too; by default each
		// may take 10% of the host's RAM, more than a small instance has.
		files = append(files, file{"etc/systemd/logind.conf.d/10-compute.conf",
			[]byte(fmt.Sprintf("[Login]\nRuntimeDirectorySize=%d\n", f.memBytes/8)), 0o644, 0, 0})
	}
	// Nobody logs in on the console (nspawn runs it read-only): no getty,
	// one process and some boot time less per instance.
	for _, u := range []string{"console-getty.service"} {
		l := filepath.Join(root, "etc/systemd/system", u)
		if err := os.Symlink("/dev/null", l); err != nil && !os.IsExist(err) {
			return fmt.Errorf("local: mask %s: %w", u, err)
		}
		if err := os.Lchown(l, int(f.base), int(f.base)); err != nil {
			return fmt.Errorf("local: %w", err)
		}
	}
	for _, fl := range files {
		p := filepath.Join(root, fl.path)
		dir := filepath.Dir(p)
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("local: %w", err)
			}
			mode := os.FileMode(0o755)
			if filepath.Base(dir) == ".ssh" {
				mode = 0o700
			}
			if err := os.Chmod(dir, mode); err != nil {
				return fmt.Errorf("local: %w", err)
			}
			if err := os.Lchown(dir, int(f.base+fl.uid), int(f.base+fl.gid)); err != nil {
				return fmt.Errorf("local: %w", err)
			}
		}
		if err := os.WriteFile(p, fl.data, fl.mode); err != nil {
			return fmt.Errorf("local: write %s: %w", fl.path, err)
		}
		if err := os.Chmod(p, fl.mode); err != nil {
			return fmt.Errorf("local: %w", err)
		}
		if err := os.Lchown(p, int(f.base+fl.uid), int(f.base+fl.gid)); err != nil {
			return fmt.Errorf("local: %w", err)
		}
	}
	return nil
}

// lookupUser finds name in root's /etc/passwd.
func lookupUser(root, name string) (uid, gid uint32, home string, err error) {
	fh, err := os.Open(filepath.Join(root, "etc/passwd"))
	if err != nil {
		return 0, 0, "", fmt.Errorf("local: %w", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) >= 7 && f[0] == name {
			u, err1 := strconv.ParseUint(f[2], 10, 32)
			g, err2 := strconv.ParseUint(f[3], 10, 32)
			if err1 != nil || err2 != nil || u >= 65536 || g >= 65536 {
				return 0, 0, "", fmt.Errorf("local: bad passwd entry for %s", name)
			}
			return uint32(u), uint32(g), f[5], nil
		}
	}
	return 0, 0, "", fmt.Errorf("local: user %s not in the image (rebuild it: computectl image build)", name)
}
