package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/spf13/cobra"
)

// SSHOptions are the inputs of `computectl ssh`.
type SSHOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	StateDir func() string
	HomeDir  func() string
	Getenv   func(string) string
	LookPath func(string) (string, error)
	// Run runs the ssh client (argv[0] is its path) on the command's
	// streams and returns its exit status; tests replace it.
	Run func(ctx context.Context, io *IOStreams, argv []string) (int, error)

	Instance string
	Command  []string
	Identity string
	User     string
	Print    bool // print the ssh command line instead of running it
	// ConnectTimeout bounds the TCP connect: a closed port drops packets
	// (default deny), which would otherwise hang for minutes.
	ConnectTimeout time.Duration
}

// NewCmdSSH builds `computectl ssh`.
func NewCmdSSH(f *Factory, runF func(*SSHOptions) error) *cobra.Command {
	opts := &SSHOptions{
		IO: f.IOStreams, Provider: f.Provider, StateDir: f.StateDir, HomeDir: f.HomeDir,
		Getenv: f.Getenv, LookPath: f.LookPath,
	}
	cmd := &cobra.Command{
		Use:   "ssh NAME|ID [-- COMMAND [ARG...]]",
		Short: "Open an SSH session to an instance, verifying its host key",
		Long: `Open an SSH session to an instance, or run COMMAND on it.

The server must present one of the host keys the provider reported for the
instance: computectl writes them to a known_hosts file of its own
($XDG_STATE_HOME/compute/known_hosts.d/<ID>) and runs the system ssh client
with StrictHostKeyChecking=yes against that file only. There is never a
"trust this host?" prompt and ~/.ssh/known_hosts is neither read nor changed.
Without an ssh binary, a built-in client with the same checks is used.

The exit status is the remote command's. The instance must allow tcp:22 from
this host (computectl create does by default).`,
		Example: `  computectl ssh web
  computectl ssh web -- systemctl is-system-running
  computectl ssh web -i ~/.ssh/work -- sudo apt-get update`,
		Args:              usageArgs(cobra.MinimumNArgs(1)),
		ValidArgsFunction: completeInstanceNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() == 0 {
				return flagErrorf("usage: computectl ssh NAME|ID [-- COMMAND [ARG...]]")
			}
			opts.Run = f.Exec
			opts.Instance = args[0]
			// Parsing stops at the instance name, so a "--" after it is
			// still in args.
			opts.Command = args[1:]
			if len(opts.Command) > 0 && opts.Command[0] == "--" {
				opts.Command = opts.Command[1:]
			}
			if len(opts.Command) == 0 {
				opts.Command = nil
			}
			if runF != nil {
				return runF(opts)
			}
			return sshRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVarP(&opts.Identity, "identity", "i", "", "private key file (default: ssh's defaults and agent)")
	cmd.Flags().StringVarP(&opts.User, "login", "l", "", "user to log in as (default: the provider's)")
	cmd.Flags().BoolVar(&opts.Print, "print", false, "print the ssh command instead of running it")
	cmd.Flags().DurationVar(&opts.ConnectTimeout, "connect-timeout", 30*time.Second, "give up connecting after this long")
	// Flags after the instance name belong to the remote command.
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func sshRun(ctx context.Context, opts *SSHOptions) error {
	if opts.Identity != "" {
		if _, err := os.Stat(opts.Identity); err != nil {
			return compute.InvalidField("--identity", opts.Identity, "no such file")
		}
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	inst, err := resolveInstance(ctx, p, opts.Instance)
	if err != nil {
		return err
	}
	if inst, err = p.GetInstance(ctx, inst.ID); err != nil {
		return err
	}
	if inst.Status != compute.StatusRunning {
		return fmt.Errorf("instance %s (%s) is %s, not running: %w", inst.Name, inst.ID, inst.Status, compute.ErrConflict)
	}
	info := inst.SSH
	if info.Host == "" {
		return fmt.Errorf("provider %s reported no SSH address for %s", p.Name(), inst.ID)
	}
	if len(info.HostKeys) == 0 {
		return fmt.Errorf("provider %s reported no SSH host key for %s; refusing to connect without verifying the host", p.Name(), inst.ID)
	}
	// Parses every key and checks its fingerprint: a malformed key list
	// fails here rather than as a confusing ssh error.
	if _, err := info.HostKeyCallback(); err != nil {
		return fmt.Errorf("host keys reported for %s: %w", inst.ID, err)
	}
	if opts.User != "" {
		info.User = opts.User
	}
	if info.User == "" {
		info.User = "root"
	}
	khFile, err := writeKnownHosts(opts.StateDir(), inst.ID, info)
	if err != nil {
		return err
	}

	sshPath, err := opts.LookPath("ssh")
	if err != nil {
		if opts.Print {
			return fmt.Errorf("no ssh client in PATH: %w", err)
		}
		return nativeSSH(ctx, opts, info)
	}
	argv := sshArgv(sshPath, info, khFile, opts.Identity, opts.ConnectTimeout, opts.Command)
	if opts.Print {
		quoted := make([]string, len(argv))
		for i, a := range argv {
			quoted[i] = shellQuote(a)
		}
		_, err := fmt.Fprintln(opts.IO.Out, strings.Join(quoted, " "))
		return err
	}
	code, err := opts.Run(ctx, opts.IO, argv)
	if err != nil {
		return err
	}
	switch code {
	case 0:
	case 255:
		// OpenSSH's own failures (connect, auth, host key) exit 255; it has
		// printed why, this says where to look.
		return &ExitCodeError{Code: code, Message: fmt.Sprintf(
			"ssh to %s (%s) failed; is tcp:22 open to this host? see computectl firewall list %s", inst.Name, info.Addr(), inst.ID)}
	default:
		// The remote command's status, passed on.
		return &ExitCodeError{Code: code}
	}
	return nil
}

// writeKnownHosts writes the instance's host keys to a known_hosts file of
// its own, replacing what an earlier instance at the same address left.
func writeKnownHosts(stateDir, id string, info compute.SSHInfo) (string, error) {
	dir := filepath.Join(stateDir, "known_hosts.d")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, id)
	tmp, err := os.CreateTemp(dir, "."+id+".*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(info.KnownHosts()); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

// sshArgv is the OpenSSH command line. Every option that touches host
// verification is set explicitly, because command line options override
// ~/.ssh/config and a user's "StrictHostKeyChecking no" must not apply.
func sshArgv(sshPath string, info compute.SSHInfo, knownHosts, identity string, connectTimeout time.Duration, command []string) []string {
	port := info.Port
	if port == 0 {
		port = 22
	}
	argv := []string{sshPath,
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		// KnownHostsCommand (OpenSSH >= 8.5) adds keys on top of the files:
		// a user's ssh_config must not widen what we trust.
		"-o", "KnownHostsCommand=none",
		"-o", "UpdateHostKeys=no",
		"-o", "CheckHostIP=no",
		"-o", "VerifyHostKeyDNS=no",
		"-o", "HostKeyAlgorithms=" + strings.Join(info.HostKeyAlgorithms(), ","),
		// The server is key-only; never offer a password prompt.
		"-o", "PasswordAuthentication=no",
		"-o", "KbdInteractiveAuthentication=no",
		"-o", "ConnectTimeout=" + strconv.Itoa(max(1, int(connectTimeout.Seconds()))),
		"-p", strconv.Itoa(port),
		"-l", info.User,
	}
	if identity != "" {
		argv = append(argv, "-i", identity, "-o", "IdentitiesOnly=yes")
	}
	// "--" ends ssh's options: a remote command starting with "-" is not
	// read as an ssh flag.
	argv = append(argv, "--", info.Host)
	return append(argv, command...)
}

// runProcess runs argv with the command's streams and returns its exit
// status. A terminal's SIGINT reaches ssh too (same process group); main
// catches it (signal.NotifyContext) so computectl outlives ssh and passes
// its status on.
func runProcess(ctx context.Context, io *IOStreams, argv []string) (int, error) {
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = io.In, io.Out, io.ErrOut
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

// shellQuote quotes s for a POSIX shell when needed.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./:,@+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
