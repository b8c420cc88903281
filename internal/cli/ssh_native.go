package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/compute-sdk/compute"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/term"
)

// nativeSSH is the client used when no ssh binary is installed. It verifies
// the host exactly like the OpenSSH path: only the reported host keys are
// accepted.
func nativeSSH(ctx context.Context, opts *SSHOptions, info compute.SSHInfo) error {
	hostKeyCallback, err := info.HostKeyCallback()
	if err != nil {
		return err
	}
	auth, closeAuth, err := nativeAuth(opts)
	if err != nil {
		return err
	}
	defer closeAuth()
	cfg := &ssh.ClientConfig{
		User:              info.User,
		Auth:              auth,
		HostKeyCallback:   hostKeyCallback,
		HostKeyAlgorithms: info.HostKeyAlgorithms(),
		Timeout:           opts.ConnectTimeout,
	}
	d := net.Dialer{Timeout: opts.ConnectTimeout}
	conn, err := d.DialContext(ctx, "tcp", info.Addr())
	if err != nil {
		return err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, info.Addr(), cfg)
	if err != nil {
		conn.Close()
		return fmt.Errorf("ssh %s: %w", info.Addr(), err)
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = opts.IO.In, opts.IO.Out, opts.IO.ErrOut

	if len(opts.Command) > 0 {
		// Like OpenSSH: the words are joined with spaces and the remote
		// shell splits them again.
		err = sess.Run(strings.Join(opts.Command, " "))
	} else {
		err = interactiveShell(opts, sess)
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return &ExitCodeError{Code: ee.ExitStatus()}
	}
	return err
}

func interactiveShell(opts *SSHOptions, sess *ssh.Session) error {
	f, ok := opts.IO.In.(*os.File)
	if ok && opts.IO.InTTY {
		fd := int(f.Fd())
		w, h, err := term.GetSize(fd)
		if err != nil {
			w, h = 80, 24
		}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer term.Restore(fd, old)
		termType := opts.Getenv("TERM")
		if termType == "" {
			termType = "xterm-256color"
		}
		if err := sess.RequestPty(termType, h, w, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
			return err
		}
	}
	if err := sess.Shell(); err != nil {
		return err
	}
	return sess.Wait()
}

// nativeAuth offers the agent's keys and the identity file (or the default
// private keys that need no passphrase).
func nativeAuth(opts *SSHOptions) ([]ssh.AuthMethod, func(), error) {
	var methods []ssh.AuthMethod
	closeFn := func() {}
	if sock := opts.Getenv("SSH_AUTH_SOCK"); sock != "" && opts.Identity == "" {
		if conn, err := net.Dial("unix", sock); err == nil {
			closeFn = func() { conn.Close() }
			methods = append(methods, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
		}
	}
	files := []string{opts.Identity}
	if opts.Identity == "" {
		files = nil
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(opts.HomeDir(), ".ssh", n))
		}
	}
	var signers []ssh.Signer
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			if opts.Identity != "" {
				return nil, closeFn, compute.InvalidField("--identity", file, err.Error())
			}
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			if opts.Identity != "" {
				return nil, closeFn, compute.InvalidField("--identity", file, "needs a passphrase; the built-in client cannot ask for it (load it into ssh-agent)")
			}
			continue
		}
		if err != nil {
			if opts.Identity != "" {
				return nil, closeFn, compute.InvalidField("--identity", file, err.Error())
			}
			continue
		}
		signers = append(signers, s)
	}
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	if len(methods) == 0 {
		return nil, closeFn, fmt.Errorf("no ssh client in PATH and no usable private key (give -i FILE or run ssh-agent)")
	}
	return methods, closeFn, nil
}
