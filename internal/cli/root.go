// Package cli implements computectl, the command line client of the compute
// SDK. Each command is built by a NewCmdX(f, runF) function that binds its
// flags to an options struct and calls runF (tests) or xRun (real work).
package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Main runs computectl with args and returns the process exit code. Errors
// are printed here, as one line, and mapped to exit codes by ExitCode.
func Main(ctx context.Context, f *Factory, args []string) int {
	root := NewCmdRoot(f)
	root.SetArgs(args)
	root.SetIn(f.IOStreams.In)
	root.SetOut(f.IOStreams.Out)
	root.SetErr(f.IOStreams.ErrOut)
	err := root.ExecuteContext(ctx)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing provider: %w", cerr)
	}
	if err != nil {
		var ec *ExitCodeError
		if !errors.As(err, &ec) || ec.Message != "" {
			fmt.Fprintf(f.IOStreams.ErrOut, "computectl: %s\n", errorLine(err))
		}
	}
	return ExitCode(err)
}

// NewCmdRoot builds the whole command tree.
func NewCmdRoot(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "computectl <command> [flags]",
		Short: "Create firewalled, SSH-able compute instances on any provider",
		Long: `computectl creates and manages compute instances, clusters of instances and
their firewall rules, on the local machine (provider "local", the default) or
on a cloud, with one security model everywhere:

  - SSH is key-only and the client checks the host key the provider reported;
  - all inbound traffic is denied by a firewall outside the instance, port 22
    included, until a rule allows it from named sources;
  - members of a cluster reach each other on every port; clusters are isolated;
  - data at rest is encrypted, APIs are spoken over TLS 1.2+.

The provider comes from --provider, else COMPUTE_PROVIDER, else the current
profile of the config file ($XDG_CONFIG_HOME/compute/config.yaml), else local.

Exit codes: 0 ok, 1 failure, 2 usage or invalid argument, 3 not found,
4 conflict, 5 precondition (e.g. needs root or a missing package).`,
		Example: `  computectl create web --wait
  computectl ssh web -- uname -a
  computectl firewall add web tcp:443 from 0.0.0.0/0
  computectl cluster create train && computectl create w1 --cluster train
  computectl list -o json`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE:          groupRunE,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			format, err := f.format()
			if err != nil {
				return &FlagError{Err: err}
			}
			f.IOStreams.quiet = f.quiet
			f.IOStreams.progress = format == FormatTable && !f.quiet
			return nil
		},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.providerFlag, "provider", "", "provider or profile to use (env COMPUTE_PROVIDER)")
	pf.StringVar(&f.profileFlag, "profile", "", "config profile to use (env COMPUTE_PROFILE)")
	pf.StringVarP(&f.outputFlag, "output", "o", "", "output format: table, json or yaml (env COMPUTE_OUTPUT)")
	pf.BoolVarP(&f.quiet, "quiet", "q", false, "no notes or progress; tables shrink to IDs (list, create, firewall) or nothing (delete, revoke)")
	pf.StringVar(&f.configFlag, "config", "", "config file (default $XDG_CONFIG_HOME/compute/config.yaml)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &FlagError{Err: err} })

	cmd.AddGroup(
		&cobra.Group{ID: "instance", Title: "Instance commands:"},
		&cobra.Group{ID: "network", Title: "Cluster and firewall commands:"},
		&cobra.Group{ID: "host", Title: "Provider and host commands:"},
	)
	add := func(group string, cmds ...*cobra.Command) {
		for _, c := range cmds {
			c.GroupID = group
			cmd.AddCommand(c)
		}
	}
	add("instance",
		NewCmdCreate(f, nil),
		NewCmdList(f, nil),
		NewCmdGet(f, nil),
		NewCmdDelete(f, nil),
		NewCmdStop(f, nil),
		NewCmdStart(f, nil),
		NewCmdReboot(f, nil),
		NewCmdSSH(f, nil),
	)
	add("network", NewCmdCluster(f), NewCmdFirewall(f))
	add("host",
		NewCmdImage(f),
		NewCmdDoctor(f, nil),
		NewCmdGC(f, nil),
		NewCmdTeardown(f, nil),
		NewCmdVerify(f, nil),
		NewCmdTypes(f, nil),
		NewCmdCaller(f, nil),
		NewCmdVersion(f, nil),
	)
	cmd.SetHelpCommandGroupID("host")
	cmd.SetCompletionCommandGroupID("host")
	return cmd
}

// groupRunE is the RunE of commands that only group subcommands: without
// arguments it shows help; an unknown subcommand is a usage error (cobra
// would otherwise print help and exit 0).
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return &FlagError{Err: errors.New(msg)}
}

// usageArgs wraps a cobra argument check so its error is a usage error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &FlagError{Err: fmt.Errorf("%s: %w (see %s --help)", cmd.CommandPath(), err, cmd.CommandPath())}
		}
		return nil
	}
}
