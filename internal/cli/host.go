package cli

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/spf13/cobra"
)

// NewCmdImage builds `computectl image`.
func NewCmdImage(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image <command>",
		Short: "Manage the local provider's instance image",
		Long: `The local provider boots every instance from one Debian image built from
Debian packages (systemd, OpenSSH, ...) on first use and cached. "image build"
builds it ahead of time, or rebuilds it with --force.`,
		Example: "  computectl image build --force",
		Args:    cobra.ArbitraryArgs,
		RunE:    groupRunE,
	}
	cmd.AddCommand(NewCmdImageBuild(f, nil))
	return cmd
}

// ImageBuildCmdOptions are the inputs of `computectl image build`.
type ImageBuildCmdOptions struct {
	IO      *IOStreams
	Printer func() *Printer
	Build   func(context.Context, Selection, ImageBuildOptions) (*ImageInfo, error)
	// Selection returns the selected provider and settings.
	Selection func() (Selection, error)

	Force bool
}

// NewCmdImageBuild builds `computectl image build`.
func NewCmdImageBuild(f *Factory, runF func(*ImageBuildCmdOptions) error) *cobra.Command {
	opts := &ImageBuildCmdOptions{IO: f.IOStreams, Printer: f.Printer, Selection: f.Selection}
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build (or rebuild) the local instance image",
		Long: `Build the local provider's instance image if it is not cached, or rebuild it
with --force. Needs root and debootstrap; takes a few minutes the first time.
Running instances keep the image they booted from.`,
		Example: "  computectl image build\n  computectl image build --force",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Build = f.BuildImage
			if runF != nil {
				return runF(opts)
			}
			return imageBuildRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "rebuild even if the image is cached")
	return cmd
}

func imageBuildRun(ctx context.Context, opts *ImageBuildCmdOptions) error {
	if opts.Build == nil {
		return fmt.Errorf("image build: this computectl was built without the local provider's image builder: %w", compute.ErrUnsupported)
	}
	sel, err := opts.Selection()
	if err != nil {
		return err
	}
	prog := opts.IO.StartProgress("building image")
	defer prog.Stop()
	info, err := opts.Build(ctx, sel, ImageBuildOptions{Force: opts.Force, Step: prog.Step})
	if err != nil {
		return err
	}
	prog.Stop()
	return opts.Printer().Print(info, func(w io.Writer) {
		verb := "built"
		if !info.Built {
			verb = "cached (use --force to rebuild)"
		}
		fmt.Fprintf(w, "Image:\t%s\n", info.Name)
		fmt.Fprintf(w, "Path:\t%s\n", info.Path)
		fmt.Fprintf(w, "State:\t%s\n", verb)
		if info.Built {
			fmt.Fprintf(w, "Took:\t%s\n", info.Duration.Round(time.Second))
		}
	})
}

// DoctorOptions are the inputs of `computectl doctor`.
type DoctorOptions struct {
	IO      *IOStreams
	Printer func() *Printer
	Doctor  func(context.Context, Selection) ([]DoctorCheck, error)
	// Selection returns the selected provider and settings.
	Selection func() (Selection, error)
}

// NewCmdDoctor builds `computectl doctor`.
func NewCmdDoctor(f *Factory, runF func(*DoctorOptions) error) *cobra.Command {
	opts := &DoctorOptions{IO: f.IOStreams, Printer: f.Printer, Selection: f.Selection}
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run local instances",
		Long: `Check what the local provider needs on this host: root, kernel features
(network namespaces, nftables, overlayfs, cgroups, ...), packages
(systemd-nspawn, debootstrap, ...) and limits (inotify instances), and say
how to fix each failed check. Exits with code 5 when a check fails.`,
		Example: "  sudo computectl doctor\n  computectl doctor -o json",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Doctor = f.Doctor
			if runF != nil {
				return runF(opts)
			}
			return doctorRun(cmd.Context(), opts)
		},
	}
}

func doctorRun(ctx context.Context, opts *DoctorOptions) error {
	if opts.Doctor == nil {
		return fmt.Errorf("doctor: this computectl was built without the local provider: %w", compute.ErrUnsupported)
	}
	sel, err := opts.Selection()
	if err != nil {
		return err
	}
	checks, err := opts.Doctor(ctx, sel)
	if err != nil {
		return err
	}
	if checks == nil {
		checks = []DoctorCheck{}
	}
	if err := opts.Printer().Print(checks, func(w io.Writer) {
		fmt.Fprintln(w, "CHECK\tRESULT\tDETAIL")
		for _, c := range checks {
			res := "ok"
			if !c.OK {
				res = "FAIL"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", c.Name, res, dash(c.Detail))
			if !c.OK && c.Fix != "" {
				fmt.Fprintf(w, "\t\tfix: %s\n", c.Fix)
			}
		}
	}); err != nil {
		return err
	}
	var failed []string
	for _, c := range checks {
		if !c.OK {
			failed = append(failed, c.Name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d check(s) failed: %s: %w", len(failed), strings.Join(failed, ", "), compute.ErrPrecondition)
	}
	return nil
}

// SimpleOptions are the inputs of commands that take no arguments and only
// need the provider (gc, types).
type SimpleOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer
}

// NewCmdGC builds `computectl gc`.
func NewCmdGC(f *Factory, runF func(*SimpleOptions) error) *cobra.Command {
	opts := &SimpleOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove objects left behind by interrupted operations",
		Long: `Find and remove the provider's objects (network namespaces, links, mounts,
security groups, ...) whose instance or cluster no longer exists, for example
after a create was killed halfway. Objects of live instances are never touched.`,
		Example: "  computectl gc",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return gcRun(cmd.Context(), opts)
		},
	}
}

func gcRun(ctx context.Context, opts *SimpleOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	gc, ok := p.(compute.GarbageCollector)
	if !ok {
		return fmt.Errorf("provider %s has no garbage collector: %w", p.Name(), compute.ErrUnsupported)
	}
	prog := opts.IO.StartProgress("collecting garbage")
	rep, err := gc.GC(ctx)
	prog.Stop()
	if err != nil {
		return err
	}
	if rep.Removed == nil {
		rep.Removed = []string{}
	}
	return opts.Printer().Print(rep, func(w io.Writer) {
		if len(rep.Removed) == 0 {
			fmt.Fprintln(w, "nothing to remove")
			return
		}
		fmt.Fprintln(w, "REMOVED")
		for _, r := range rep.Removed {
			fmt.Fprintln(w, r)
		}
	})
}

// NewCmdTeardown builds `computectl teardown`.
func NewCmdTeardown(f *Factory, runF func(*SimpleOptions) error) *cobra.Command {
	opts := &SimpleOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	return &cobra.Command{
		Use:   "teardown",
		Short: "Remove the provider's shared host objects once nothing uses them",
		Long: `Remove what the provider shares between its instances on this host: for the
local provider, the router network namespace, the host's veth, route and
nftables table, and its cgroup directories. It refuses (exit 4) while any
instance or cluster exists, so it never cuts an instance off. The next command
that needs them sets them up again.`,
		Example: "  computectl teardown",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return teardownRun(cmd.Context(), opts)
		},
	}
}

func teardownRun(ctx context.Context, opts *SimpleOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	td, ok := p.(interface{ Teardown(context.Context) error })
	if !ok {
		return fmt.Errorf("provider %s has no shared host objects to tear down: %w", p.Name(), compute.ErrUnsupported)
	}
	if err := td.Teardown(ctx); err != nil {
		return err
	}
	opts.IO.Notef("removed the %s provider's shared host objects", p.Name())
	return nil
}

// NewCmdTypes builds `computectl types`.
func NewCmdTypes(f *Factory, runF func(*SimpleOptions) error) *cobra.Command {
	opts := &SimpleOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	return &cobra.Command{
		Use:     "types",
		Short:   "List instance types",
		Long:    "List the provider's instance types (sizes) for create --type; * marks the default.",
		Example: "  computectl types\n  computectl types --provider aws -o json",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return typesRun(cmd.Context(), opts)
		},
	}
}

func typesRun(ctx context.Context, opts *SimpleOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	tl, ok := p.(compute.InstanceTypeLister)
	if !ok {
		return fmt.Errorf("provider %s has no instance type catalogue: %w", p.Name(), compute.ErrUnsupported)
	}
	types, err := tl.InstanceTypes(ctx)
	if err != nil {
		return err
	}
	if types == nil {
		types = []compute.InstanceType{}
	}
	return opts.Printer().Print(types, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tVCPUS\tMEMORY\tMAX PIDS")
		for _, t := range types {
			name := t.Name
			if t.Default {
				name += " *"
			}
			pids := "-"
			if t.MaxPIDs > 0 {
				pids = fmt.Sprint(t.MaxPIDs)
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", name, t.VCPUs, mib(t.MemoryMiB), pids)
		}
	})
}

func mib(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d GiB", n/1024)
	}
	return fmt.Sprintf("%d MiB", n)
}

// VerifyCmdOptions are the inputs of `computectl verify`.
type VerifyCmdOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer
	Verify   func(context.Context, compute.Provider, VerifyOptions) (*VerifyReport, error)

	Only        []string
	Image, Type string
	Timeout     time.Duration
	Callers     []string
}

// NewCmdVerify builds `computectl verify`.
func NewCmdVerify(f *Factory, runF func(*VerifyCmdOptions) error) *cobra.Command {
	opts := &VerifyCmdOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Prove the security model against the provider with real probes",
		Long: `Run the conformance suite against the configured provider: it creates two
clusters, instances and an outside vantage point, checks every guarantee of
the security model from the network (SSH host keys and algorithms, default
deny, rules opening exactly what they say, cluster isolation, encryption,
teardown), deletes everything it created and prints a report. It creates
real instances: on a cloud, that costs money.

Exits with code 1 when any check fails. Skipped checks say why.`,
		Example: `  sudo computectl verify
  computectl verify --only deny/ --only rule/ -o json
  computectl verify --provider prod`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Verify = f.Verify
			if runF != nil {
				return runF(opts)
			}
			return verifyRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.Only, "only", nil, "run only checks whose name starts with this prefix (repeatable)")
	cmd.Flags().StringVar(&opts.Image, "image", "", "image for the test instances")
	cmd.Flags().StringVar(&opts.Type, "type", "", "instance type for the test instances")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 15*time.Minute, "give up after this long")
	cmd.Flags().StringArrayVar(&opts.Callers, "caller-cidr", nil, "this host's address as instances see it, for providers that cannot tell (repeatable)")
	return cmd
}

func verifyRun(ctx context.Context, opts *VerifyCmdOptions) error {
	if opts.Verify == nil {
		return fmt.Errorf("verify: this computectl was built without the conformance suite: %w", compute.ErrUnsupported)
	}
	if opts.Timeout <= 0 {
		return compute.InvalidField("--timeout", opts.Timeout.String(), "must be positive")
	}
	var callers []netip.Prefix
	for _, c := range opts.Callers {
		p, err := netip.ParsePrefix(c)
		if err != nil || p != p.Masked() {
			return compute.InvalidField("--caller-cidr", c, "must be a canonical CIDR such as 192.0.2.10/32")
		}
		callers = append(callers, p)
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	prog := opts.IO.StartProgress("verifying " + p.Name())
	rep, err := opts.Verify(ctx, p, VerifyOptions{Image: opts.Image, Type: opts.Type, Only: opts.Only, Timeout: opts.Timeout, CallerPrefixes: callers, Step: prog.Step})
	prog.Stop()
	if err != nil {
		return err
	}
	if rep.Results == nil {
		rep.Results = []VerifyResult{}
	}
	var pass, fail, skip int
	for _, r := range rep.Results {
		switch r.Status {
		case "pass":
			pass++
		case "fail":
			fail++
		default:
			skip++
		}
	}
	if err := opts.Printer().Print(rep, func(w io.Writer) {
		fmt.Fprintln(w, "CHECK\tRESULT\tTIME\tREASON")
		for _, r := range rep.Results {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Name, strings.ToUpper(r.Status), r.Duration.Round(10*time.Millisecond), dash(r.Reason))
		}
		fmt.Fprintf(w, "\n%s: %d passed, %d failed, %d skipped in %s\n", rep.Provider, pass, fail, skip, rep.Duration.Round(time.Second))
	}); err != nil {
		return err
	}
	if fail > 0 {
		return &ExitCodeError{Code: ExitError, Message: fmt.Sprintf("verify: %d of %d checks failed", fail, len(rep.Results))}
	}
	if len(rep.Results) == 0 {
		return &ExitCodeError{Code: ExitError, Message: "verify: no check ran (check --only)"}
	}
	return nil
}

// Version is set at build time with
// -ldflags "-X github.com/compute-sdk/compute/internal/cli.Version=v1.2.3".
var Version = "dev"

// VersionInfo is what `computectl version` prints.
type VersionInfo struct {
	Version   string   `json:"version"`
	Commit    string   `json:"commit,omitempty"`
	Modified  bool     `json:"modified,omitempty"`
	Go        string   `json:"go"`
	Platform  string   `json:"platform"`
	Providers []string `json:"providers"`
}

// NewCmdVersion builds `computectl version`.
func NewCmdVersion(f *Factory, runF func(*SimpleOptions) error) *cobra.Command {
	opts := &SimpleOptions{IO: f.IOStreams, Printer: f.Printer}
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version and the compiled-in providers",
		Long:    "Print computectl's version, the commit it was built from, and the providers compiled into it.",
		Example: "  computectl version -o json",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return versionRun(opts)
		},
	}
}

func versionRun(opts *SimpleOptions) error {
	v := VersionInfo{
		Version:   Version,
		Go:        runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
		Providers: compute.Providers(),
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
		if v.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
	}
	return opts.Printer().Print(v, func(w io.Writer) {
		commit := v.Commit
		if v.Modified {
			commit += " (modified)"
		}
		fmt.Fprintf(w, "Version:\t%s\n", v.Version)
		fmt.Fprintf(w, "Commit:\t%s\n", dash(commit))
		fmt.Fprintf(w, "Go:\t%s %s\n", v.Go, v.Platform)
		fmt.Fprintf(w, "Providers:\t%s\n", strings.Join(v.Providers, ", "))
	})
}

// CallerInfo is what `computectl caller` prints.
type CallerInfo struct {
	Provider string         `json:"provider"`
	Prefixes []netip.Prefix `json:"prefixes"`
}

// NewCmdCaller builds `computectl caller`.
func NewCmdCaller(f *Factory, runF func(*SimpleOptions) error) *cobra.Command {
	opts := &SimpleOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	return &cobra.Command{
		Use:   "caller",
		Short: "Print this host's address as instances see it",
		Long: `Print the source addresses instances see for traffic from this host, comma
separated, as the provider reports them: the sources of create's default SSH
rule. Providers that cannot tell without asking an outside service (AWS)
report nothing and this command fails; write the rule's source yourself.`,
		Example: `  computectl caller
  computectl firewall add cluster:train "tcp:22 from $(computectl caller)"`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return callerRun(cmd.Context(), opts)
		},
	}
}

func callerRun(ctx context.Context, opts *SimpleOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	cp, ok := p.(compute.CallerPrefixer)
	if !ok {
		return fmt.Errorf("provider %s cannot tell this host's address: %w", p.Name(), compute.ErrUnsupported)
	}
	prefixes, err := cp.CallerPrefixes(ctx)
	if err != nil {
		return err
	}
	if len(prefixes) == 0 {
		return fmt.Errorf("provider %s reported no address for this host: %w", p.Name(), compute.ErrUnsupported)
	}
	info := CallerInfo{Provider: p.Name(), Prefixes: prefixes}
	return opts.Printer().Print(info, func(w io.Writer) { fmt.Fprintln(w, joinPrefixes(prefixes)) })
}
