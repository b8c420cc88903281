package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/spf13/cobra"
)

// ListOptions are the inputs of `computectl list`.
type ListOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer

	Cluster string
	Labels  []string
}

// NewCmdList builds `computectl list`.
func NewCmdList(f *Factory, runF func(*ListOptions) error) *cobra.Command {
	opts := &ListOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List instances",
		Long:    "List instances, sorted by name. With --quiet, print only their IDs.",
		Example: `  computectl list
  computectl list --cluster train -o json
  computectl list -q | xargs computectl delete`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return listRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Cluster, "cluster", "", "only members of this cluster")
	cmd.Flags().StringArrayVar(&opts.Labels, "label", nil, "only instances with label key=value (repeatable)")
	_ = cmd.RegisterFlagCompletionFunc("cluster", completeClusterNames(f))
	return cmd
}

func listRun(ctx context.Context, opts *ListOptions) error {
	if opts.Cluster != "" {
		if err := compute.ValidateName("--cluster", opts.Cluster); err != nil {
			return err
		}
	}
	labels, err := parseLabels(opts.Labels)
	if err != nil {
		return err
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	list, err := p.ListInstances(ctx, compute.ListOptions{Cluster: opts.Cluster, Labels: labels})
	if err != nil {
		return err
	}
	if list == nil {
		list = []*compute.Instance{}
	}
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		for _, inst := range list {
			fmt.Fprintln(opts.IO.Out, inst.ID)
		}
		return nil
	}
	return pr.Print(list, func(w io.Writer) { instanceTable(w, list) })
}

func instanceTable(w io.Writer, list []*compute.Instance) {
	fmt.Fprintln(w, "NAME\tID\tSTATUS\tCLUSTER\tADDRESS\tTYPE\tAGE")
	for _, inst := range list {
		addr := "-"
		if len(inst.Addresses) > 0 {
			addr = inst.Addresses[0].String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", inst.Name, inst.ID, inst.Status, dash(inst.Cluster), addr, dash(inst.Type), age(inst.CreatedAt))
	}
}

// age prints a duration the way kubectl does: the largest unit or two.
func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// GetOptions are the inputs of `computectl get`.
type GetOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer

	Instance string
}

// NewCmdGet builds `computectl get`.
func NewCmdGet(f *Factory, runF func(*GetOptions) error) *cobra.Command {
	opts := &GetOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
	cmd := &cobra.Command{
		Use:   "get NAME|ID",
		Short: "Show one instance",
		Long: `Show one instance: its status, addresses, and the SSH host keys the provider
reported (computectl ssh verifies the server against them).`,
		Example: `  computectl get web
  computectl get i-0a1b2c3d -o yaml`,
		Args:              usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: completeInstanceNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Instance = args[0]
			if runF != nil {
				return runF(opts)
			}
			return getRun(cmd.Context(), opts)
		},
	}
	return cmd
}

func getRun(ctx context.Context, opts *GetOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	inst, err := resolveInstance(ctx, p, opts.Instance)
	if err != nil {
		return err
	}
	// The list entry may be abbreviated on some providers: get the full
	// record.
	if full, err := p.GetInstance(ctx, inst.ID); err == nil {
		inst = full
	} else {
		return err
	}
	return opts.Printer().Print(inst, func(w io.Writer) { instanceDetail(w, inst) })
}

func instanceDetail(w io.Writer, inst *compute.Instance) {
	addrs := make([]string, len(inst.Addresses))
	for i, a := range inst.Addresses {
		addrs[i] = a.String()
	}
	fmt.Fprintf(w, "Name:\t%s\n", inst.Name)
	fmt.Fprintf(w, "ID:\t%s\n", inst.ID)
	if inst.RefID != "" {
		fmt.Fprintf(w, "Ref ID:\t%s\n", inst.RefID)
	}
	fmt.Fprintf(w, "Provider:\t%s\n", inst.Provider)
	status := string(inst.Status)
	if inst.StatusReason != "" {
		status += " (" + inst.StatusReason + ")"
	}
	fmt.Fprintf(w, "Status:\t%s\n", status)
	fmt.Fprintf(w, "Cluster:\t%s\n", dash(inst.Cluster))
	fmt.Fprintf(w, "Type:\t%s\n", dash(inst.Type))
	fmt.Fprintf(w, "Image:\t%s\n", dash(inst.Image))
	fmt.Fprintf(w, "Addresses:\t%s\n", dash(strings.Join(addrs, ", ")))
	if inst.SSH.Host != "" {
		fmt.Fprintf(w, "SSH:\t%s@%s\n", dash(inst.SSH.User), inst.SSH.Addr())
	}
	for _, hk := range inst.SSH.HostKeys {
		fmt.Fprintf(w, "Host key:\t%s %s\n", hk.Type, hk.Fingerprint)
	}
	if len(inst.Labels) > 0 {
		keys := make([]string, 0, len(inst.Labels))
		for k := range inst.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			keys[i] = k + "=" + inst.Labels[k]
		}
		fmt.Fprintf(w, "Labels:\t%s\n", strings.Join(keys, ", "))
	}
	if !inst.CreatedAt.IsZero() {
		fmt.Fprintf(w, "Created:\t%s (%s ago)\n", inst.CreatedAt.Format(time.RFC3339), age(inst.CreatedAt))
	}
}

// ActionOptions are the inputs of delete, stop, start and reboot.
type ActionOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer

	Action    string // "delete", "stop", "start", "reboot"
	Instances []string
	Wait      bool
	Timeout   time.Duration
}

// ActionResult is what delete/stop/start/reboot print per instance.
type ActionResult struct {
	ID     string         `json:"id"`
	Name   string         `json:"name"`
	Action string         `json:"action"`
	Status compute.Status `json:"status"`
}

// NewCmdDelete builds `computectl delete` (alias terminate).
func NewCmdDelete(f *Factory, runF func(*ActionOptions) error) *cobra.Command {
	return newActionCmd(f, runF, "delete", &cobra.Command{
		Use:     "delete NAME|ID...",
		Aliases: []string{"terminate", "rm"},
		Short:   "Delete (terminate) instances",
		Long: `Terminate instances and everything created for them: disk, addresses and
rules. Every argument is resolved first; if one names nothing, nothing is
deleted.`,
		Example: `  computectl delete web
  computectl delete w1 w2 i-0a1b2c3d`,
	})
}

// NewCmdStop builds `computectl stop`.
func NewCmdStop(f *Factory, runF func(*ActionOptions) error) *cobra.Command {
	return newActionCmd(f, runF, "stop", &cobra.Command{
		Use:     "stop NAME|ID...",
		Short:   "Stop instances, keeping their disks",
		Long:    "Stop instances, keeping their disks and rules. Not every provider can stop instances.",
		Example: "  computectl stop web --wait",
	})
}

// NewCmdStart builds `computectl start`.
func NewCmdStart(f *Factory, runF func(*ActionOptions) error) *cobra.Command {
	return newActionCmd(f, runF, "start", &cobra.Command{
		Use:     "start NAME|ID...",
		Short:   "Start stopped instances",
		Long:    "Start stopped instances. Not every provider can stop and start instances.",
		Example: "  computectl start web --wait",
	})
}

// NewCmdReboot builds `computectl reboot`.
func NewCmdReboot(f *Factory, runF func(*ActionOptions) error) *cobra.Command {
	return newActionCmd(f, runF, "reboot", &cobra.Command{
		Use:     "reboot NAME|ID...",
		Short:   "Reboot instances",
		Long:    "Reboot running instances. Not every provider can reboot instances.",
		Example: "  computectl reboot web",
	})
}

func newActionCmd(f *Factory, runF func(*ActionOptions) error, action string, cmd *cobra.Command) *cobra.Command {
	opts := &ActionOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer, Action: action}
	cmd.Args = usageArgs(cobra.MinimumNArgs(1))
	cmd.ValidArgsFunction = completeInstanceNames(f)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		opts.Instances = args
		if runF != nil {
			return runF(opts)
		}
		return actionRun(cmd.Context(), opts)
	}
	if action != "delete" {
		cmd.Flags().BoolVar(&opts.Wait, "wait", false, "wait until the instances reach the new state")
		cmd.Flags().DurationVar(&opts.Timeout, "timeout", 5*time.Minute, "how long --wait waits")
	}
	return cmd
}

func actionRun(ctx context.Context, opts *ActionOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	// Fail before resolving names when the provider cannot do it at all.
	var do func(context.Context, string) error
	want := compute.StatusRunning
	switch opts.Action {
	case "delete":
		do, want = p.TerminateInstance, compute.StatusTerminated
	case "stop", "start":
		ss, ok := p.(compute.StopStarter)
		if !ok {
			return fmt.Errorf("provider %s cannot stop and start instances: %w", p.Name(), compute.ErrUnsupported)
		}
		do = ss.StartInstance
		if opts.Action == "stop" {
			do, want = ss.StopInstance, compute.StatusStopped
		}
	case "reboot":
		rb, ok := p.(compute.Rebooter)
		if !ok {
			return fmt.Errorf("provider %s cannot reboot instances: %w", p.Name(), compute.ErrUnsupported)
		}
		do = rb.RebootInstance
	default:
		return fmt.Errorf("unknown action %q", opts.Action)
	}
	insts, err := resolveInstances(ctx, p, opts.Instances)
	if err != nil {
		return err
	}
	prog := opts.IO.StartProgress("")
	defer prog.Stop()
	results := []ActionResult{}
	for _, inst := range insts {
		prog.Step(fmt.Sprintf("%s %s (%s)", verbing(opts.Action), inst.Name, inst.ID))
		if err := do(ctx, inst.ID); err != nil {
			return fmt.Errorf("%s %s (%s): %w", opts.Action, inst.Name, inst.ID, err)
		}
		status := want
		if opts.Action != "delete" {
			status = ""
			if opts.Wait {
				prog.Step(fmt.Sprintf("waiting for %s (%s) to be %s", inst.Name, inst.ID, want))
				wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
				got, err := compute.Wait(wctx, p, inst.ID, want)
				cancel()
				if err != nil {
					return fmt.Errorf("%s %s (%s): %w", opts.Action, inst.Name, inst.ID, err)
				}
				status = got.Status
			} else if got, err := p.GetInstance(ctx, inst.ID); err == nil {
				status = got.Status
			}
		}
		results = append(results, ActionResult{ID: inst.ID, Name: inst.Name, Action: opts.Action, Status: status})
	}
	prog.Stop()
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		return nil
	}
	return pr.Print(results, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tID\tACTION\tSTATUS")
		for _, r := range results {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Name, r.ID, r.Action, dash(string(r.Status)))
		}
	})
}

func verbing(action string) string {
	switch action {
	case "delete":
		return "deleting"
	case "stop":
		return "stopping"
	case "start":
		return "starting"
	case "reboot":
		return "rebooting"
	}
	return action
}
