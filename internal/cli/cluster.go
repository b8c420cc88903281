package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/compute-sdk/compute"
	"github.com/spf13/cobra"
)

// NewCmdCluster builds `computectl cluster`.
func NewCmdCluster(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster <command>",
		Short: "Create, list and delete clusters",
		Long: `A cluster is a group of instances that reach each other on every port and
protocol, and are isolated from every other cluster. Instances join a cluster
when created (computectl create NAME --cluster C). Rules that target a cluster
(computectl firewall add cluster:C ...) apply to every member.`,
		Example: `  computectl cluster create train
  computectl create w1 --cluster train
  computectl cluster delete train`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(
		NewCmdClusterCreate(f, nil),
		NewCmdClusterList(f, nil),
		NewCmdClusterGet(f, nil),
		NewCmdClusterDelete(f, nil),
	)
	return cmd
}

// ClusterOptions are the inputs of the cluster subcommands.
type ClusterOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer

	Names  []string
	Labels []string
}

func newClusterOptions(f *Factory) *ClusterOptions {
	return &ClusterOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
}

// NewCmdClusterCreate builds `computectl cluster create`.
func NewCmdClusterCreate(f *Factory, runF func(*ClusterOptions) error) *cobra.Command {
	opts := newClusterOptions(f)
	cmd := &cobra.Command{
		Use:     "create NAME",
		Short:   "Create an empty cluster",
		Long:    "Create an empty cluster. Creating a cluster that exists is a conflict (exit code 4).",
		Example: "  computectl cluster create train --label team=ml",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Names = args
			if runF != nil {
				return runF(opts)
			}
			return clusterCreateRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.Labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

func clusterCreateRun(ctx context.Context, opts *ClusterOptions) error {
	labels, err := parseLabels(opts.Labels)
	if err != nil {
		return err
	}
	spec := compute.ClusterSpec{Name: opts.Names[0], Labels: labels}
	if err := spec.Validate(); err != nil {
		return err
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	c, err := p.CreateCluster(ctx, spec)
	if err != nil {
		return err
	}
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		_, err := fmt.Fprintln(opts.IO.Out, c.Name)
		return err
	}
	return pr.Print(c, func(w io.Writer) { clusterTable(w, []*compute.Cluster{c}) })
}

// NewCmdClusterList builds `computectl cluster list`.
func NewCmdClusterList(f *Factory, runF func(*ClusterOptions) error) *cobra.Command {
	opts := newClusterOptions(f)
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List clusters",
		Long:    "List clusters, sorted by name.",
		Example: "  computectl cluster list -o json",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(opts)
			}
			return clusterListRun(cmd.Context(), opts)
		},
	}
}

func clusterListRun(ctx context.Context, opts *ClusterOptions) error {
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	list, err := p.ListClusters(ctx)
	if err != nil {
		return err
	}
	if list == nil {
		list = []*compute.Cluster{}
	}
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		for _, c := range list {
			fmt.Fprintln(opts.IO.Out, c.Name)
		}
		return nil
	}
	return pr.Print(list, func(w io.Writer) { clusterTable(w, list) })
}

func clusterTable(w io.Writer, list []*compute.Cluster) {
	fmt.Fprintln(w, "NAME\tID\tSUBNETS\tAGE")
	for _, c := range list {
		subnets := make([]string, len(c.Subnets))
		for i, s := range c.Subnets {
			subnets[i] = s.String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Name, dash(c.ID), dash(strings.Join(subnets, ",")), age(c.CreatedAt))
	}
}

// ClusterDetail is what `cluster get` prints: the cluster, its members and
// its rules.
type ClusterDetail struct {
	*compute.Cluster
	Members []*compute.Instance    `json:"members"`
	Rules   []compute.FirewallRule `json:"rules,omitempty"`
}

// NewCmdClusterGet builds `computectl cluster get`.
func NewCmdClusterGet(f *Factory, runF func(*ClusterOptions) error) *cobra.Command {
	opts := newClusterOptions(f)
	return &cobra.Command{
		Use:               "get NAME",
		Short:             "Show a cluster, its members and its rules",
		Long:              "Show a cluster, its members and the rules that target it.",
		Example:           "  computectl cluster get train",
		Args:              usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: completeClusterNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Names = args
			if runF != nil {
				return runF(opts)
			}
			return clusterGetRun(cmd.Context(), opts)
		},
	}
}

func clusterGetRun(ctx context.Context, opts *ClusterOptions) error {
	name := opts.Names[0]
	if err := compute.ValidateName("cluster", name); err != nil {
		return err
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	c, err := p.GetCluster(ctx, name)
	if err != nil {
		return err
	}
	d := ClusterDetail{Cluster: c}
	if d.Members, err = p.ListInstances(ctx, compute.ListOptions{Cluster: name}); err != nil {
		return err
	}
	if d.Members == nil {
		d.Members = []*compute.Instance{}
	}
	if fm, ok := p.(compute.FirewallManager); ok {
		if d.Rules, err = fm.ListRules(ctx, compute.ClusterTarget(name)); err != nil {
			return err
		}
	}
	return opts.Printer().Print(d, func(w io.Writer) {
		fmt.Fprintf(w, "Name:\t%s\n", c.Name)
		fmt.Fprintf(w, "ID:\t%s\n", dash(c.ID))
		fmt.Fprintf(w, "Provider:\t%s\n", c.Provider)
		for _, s := range c.Subnets {
			fmt.Fprintf(w, "Subnet:\t%s\n", s)
		}
		fmt.Fprintf(w, "Members:\t%d\n", len(d.Members))
		for _, m := range d.Members {
			addr := "-"
			if len(m.Addresses) > 0 {
				addr = m.Addresses[0].String()
			}
			fmt.Fprintf(w, "  %s\t%s %s %s\n", m.Name, m.ID, m.Status, addr)
		}
		fmt.Fprintf(w, "Rules:\t%d\n", len(d.Rules))
		for _, r := range d.Rules {
			fmt.Fprintf(w, "  %s\t%s\n", r.ID, formatRule(r.RuleSpec))
		}
	})
}

// NewCmdClusterDelete builds `computectl cluster delete`.
func NewCmdClusterDelete(f *Factory, runF func(*ClusterOptions) error) *cobra.Command {
	opts := newClusterOptions(f)
	return &cobra.Command{
		Use:     "delete NAME...",
		Aliases: []string{"rm"},
		Short:   "Delete empty clusters",
		Long: `Delete clusters and the rules that target them. A cluster that still has
members, or that another target's rule names as a source, is not deleted
(conflict, exit code 4).`,
		Example:           "  computectl cluster delete train",
		Args:              usageArgs(cobra.MinimumNArgs(1)),
		ValidArgsFunction: completeClusterNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Names = args
			if runF != nil {
				return runF(opts)
			}
			return clusterDeleteRun(cmd.Context(), opts)
		},
	}
}

func clusterDeleteRun(ctx context.Context, opts *ClusterOptions) error {
	for _, n := range opts.Names {
		if err := compute.ValidateName("cluster", n); err != nil {
			return err
		}
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	// Check that every cluster exists before deleting any.
	for _, n := range opts.Names {
		if _, err := p.GetCluster(ctx, n); err != nil {
			return err
		}
	}
	type deleted struct {
		Name   string `json:"name"`
		Action string `json:"action"`
	}
	out := []deleted{}
	for _, n := range opts.Names {
		if err := p.DeleteCluster(ctx, n); err != nil {
			return fmt.Errorf("delete cluster %s: %w", n, err)
		}
		out = append(out, deleted{Name: n, Action: "delete"})
	}
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		return nil
	}
	return pr.Print(out, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tACTION")
		for _, d := range out {
			fmt.Fprintf(w, "%s\t%s\n", d.Name, d.Action)
		}
	})
}
