package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance/internal/probe"
	"golang.org/x/crypto/ssh"
)

// sshConfig returns a client config for inst that verifies the host key
// strictly against what the provider returned.
func sshConfig(inst *compute.Instance, auth ...ssh.AuthMethod) (*ssh.ClientConfig, error) {
	cb, err := inst.SSH.HostKeyCallback()
	if err != nil {
		return nil, err
	}
	if len(inst.SSH.HostKeys) == 0 {
		return nil, fmt.Errorf("instance %s: the provider returned no SSH host keys, so the host cannot be verified", inst.ID)
	}
	return &ssh.ClientConfig{
		User:              inst.SSH.User,
		Auth:              auth,
		HostKeyCallback:   cb,
		HostKeyAlgorithms: inst.SSH.HostKeyAlgorithms(),
		Timeout:           10 * time.Second,
	}, nil
}

// dialSSH connects to addr with cfg, bounded by ctx.
func dialSSH(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// exec runs cmd on m and returns its stdout; a non-zero exit is an error
// carrying stderr.
func (m *member) exec(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	if m.ssh == nil {
		return nil, fmt.Errorf("%s: no SSH connection", m.key)
	}
	sess, err := m.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("%s: ssh session: %w", m.key, err)
	}
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, &stdout, &stderr
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	if err := sess.Run(cmd); err != nil {
		if ctx.Err() != nil {
			return stdout.Bytes(), fmt.Errorf("%s: %q: %w", m.key, cmd, ctx.Err())
		}
		return stdout.Bytes(), fmt.Errorf("%s: %q: %v: %s", m.key, cmd, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// root prefixes cmd with sudo when the SSH user is not root.
func (m *member) root(cmd string) string {
	if m.inst.SSH.User == "root" || m.inst.SSH.User == "" {
		return cmd
	}
	return "sudo -n " + cmd
}

// probeCmd is the command line that runs the probe program on m.
func (m *member) probeCmd(args ...string) string {
	return "env " + probe.EnvVar + "=1 " + m.probePath + " " + strings.Join(args, " ")
}

// installProbe copies the running binary to m; it serves as the probe
// program there (see the package doc).
func (m *member) installProbe(ctx context.Context, runID string) error {
	exe, err := os.Open("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("open own binary to copy as the probe: %w", err)
	}
	defer exe.Close()
	path := "/var/tmp/compute-conformance-" + runID
	if _, err := m.exec(ctx, "umask 077 && cat > "+path+".tmp && chmod 700 "+path+".tmp && mv "+path+".tmp "+path, bufio.NewReaderSize(exe, 1<<20)); err != nil {
		return fmt.Errorf("copy the probe program: %w", err)
	}
	m.probePath = path
	// A quick self-test: the binary runs there and speaks the protocol.
	out, err := m.exec(ctx, m.probeCmd("dial", "-token", "x", "-timeout", "200ms"), nil)
	if err != nil {
		m.probePath = ""
		return fmt.Errorf("run the probe program (is the instance Linux on this architecture?): %w", err)
	}
	if len(bytes.TrimSpace(out)) != 0 {
		m.probePath = ""
		return fmt.Errorf("the probe program printed %q for an empty dial", out)
	}
	return nil
}

// remoteListener is a probe listener running in an SSH session: closing the
// session closes its stdin, which makes it exit.
type remoteListener struct {
	sess  *ssh.Session
	stdin io.WriteCloser
	ready probe.Ready
}

func (m *member) startListener(ctx context.Context, tcp, udp []uint16, token string) (*remoteListener, error) {
	if m.probePath == "" {
		return nil, fmt.Errorf("%s: probe program not installed", m.key)
	}
	sess, err := m.ssh.NewSession()
	if err != nil {
		return nil, err
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	cmd := m.probeCmd("listen", "-tcp", probe.FormatPorts(tcp), "-udp", probe.FormatPorts(udp), "-token", token)
	if err := sess.Start(cmd); err != nil {
		sess.Close()
		return nil, err
	}
	type line struct {
		r   probe.Ready
		err error
	}
	got := make(chan line, 1)
	go func() {
		var r probe.Ready
		err := json.NewDecoder(stdout).Decode(&r)
		got <- line{r, err}
	}()
	l := &remoteListener{sess: sess, stdin: stdin}
	select {
	case g := <-got:
		if g.err != nil || g.r.Err != "" {
			l.Close()
			return nil, fmt.Errorf("%s: listener: %v %s %s", m.key, g.err, g.r.Err, strings.TrimSpace(stderr.String()))
		}
		l.ready = g.r
		return l, nil
	case <-ctx.Done():
		l.Close()
		return nil, ctx.Err()
	case <-time.After(30 * time.Second):
		l.Close()
		return nil, fmt.Errorf("%s: listener did not report ready in 30s", m.key)
	}
}

func (l *remoteListener) Close() {
	l.stdin.Close()
	l.sess.Close()
}

// dial runs the probe's dial mode on m for targets.
func (m *member) dial(ctx context.Context, targets []probe.Target, token string, timeout time.Duration) ([]probe.Result, error) {
	if m.probePath == "" {
		return nil, fmt.Errorf("%s: probe program not installed", m.key)
	}
	args := []string{"dial", "-token", token, "-timeout", timeout.String()}
	for _, t := range targets {
		args = append(args, t.String())
	}
	out, err := m.exec(ctx, m.probeCmd(args...), nil)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	res := make([]probe.Result, 0, len(targets))
	for range targets {
		var r probe.Result
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%s: probe output: %w (%q)", m.key, err, out)
		}
		res = append(res, r)
	}
	for i, r := range res {
		if r.Target != targets[i].String() {
			return nil, fmt.Errorf("%s: probe answered for %s, asked %s", m.key, r.Target, targets[i])
		}
	}
	return res, nil
}

// dnat installs (or, with from == 0, removes) the DNAT rule on m.
func (m *member) dnat(ctx context.Context, from, to uint16) (probe.DNATResult, error) {
	cmd := m.root(m.probeCmd("undnat"))
	if from != 0 {
		cmd = m.root(m.probeCmd("dnat", "-from", fmt.Sprint(from), "-to", fmt.Sprint(to), "-addr", m.addr.String()))
	}
	out, err := m.exec(ctx, cmd, nil)
	if err != nil {
		return probe.DNATResult{}, err
	}
	var r probe.DNATResult
	if err := json.Unmarshal(bytes.TrimSpace(out), &r); err != nil {
		return r, fmt.Errorf("%s: dnat output %q: %w", m.key, out, err)
	}
	return r, nil
}

var errNoSSH = errors.New("no SSH connection")
