package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
	"github.com/spf13/cobra"
)

const ruleSyntax = `A RULE is PROTO[:PORTS] from SOURCE[,SOURCE...] [# description]:
  tcp:22 from 192.0.2.10/32
  tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32
  udp:53 from cluster:train
  icmp from 192.168.0.0/16
  all from cluster:a,cluster:b
PROTO is tcp, udp (both need PORTS), icmp, icmpv6 or all. A SOURCE is a CIDR
or cluster:NAME; a rule always names its sources (0.0.0.0/0 is the world:
write it only if you mean it).

A TARGET is an instance (NAME, ID or instance:NAME) or a cluster
(cluster:NAME); a cluster rule applies to every member.`

// NewCmdFirewall builds `computectl firewall`.
func NewCmdFirewall(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "firewall <command>",
		Aliases: []string{"fw"},
		Short:   "List, add, revoke and set ingress rules",
		Long: `Every instance denies all inbound traffic, port 22 included, except what its
rules and its cluster's rules allow (members of a cluster always reach each
other). Rules are enforced outside the instance. Egress is always allowed.

` + ruleSyntax,
		Example: `  computectl firewall add web tcp:443 from 0.0.0.0/0
  computectl firewall add cluster:train 'tcp:8000-8100 from cluster:web'
  computectl firewall list web
  computectl firewall revoke fw-0123456789abcdef
  computectl firewall set web -f rules.txt`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(
		NewCmdFirewallAdd(f, nil),
		NewCmdFirewallList(f, nil),
		NewCmdFirewallRevoke(f, nil),
		NewCmdFirewallSet(f, nil),
	)
	return cmd
}

// FirewallOptions are the inputs of the firewall subcommands.
type FirewallOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer

	Target  string   // TARGET argument ("" for list: every target)
	Rules   []string // rule texts (add: one; set: --rule values)
	File    string   // set -f
	None    bool     // set --none
	RuleIDs []string // revoke
}

func newFirewallOptions(f *Factory) *FirewallOptions {
	return &FirewallOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer}
}

// RuleView is a rule as printed: the stored rule plus its text form.
type RuleView struct {
	compute.FirewallRule
	Rule string `json:"rule"`
}

func viewRules(rules []compute.FirewallRule) []RuleView {
	out := make([]RuleView, len(rules))
	for i, r := range rules {
		out[i] = RuleView{FirewallRule: r, Rule: formatRule(r.RuleSpec)}
	}
	return out
}

// formatRule writes a rule without its description (printed apart).
func formatRule(r compute.RuleSpec) string {
	r.Description = ""
	return policy.Format(r)
}

func ruleTable(w io.Writer, rules []RuleView) {
	fmt.Fprintln(w, "ID\tTARGET\tRULE\tDESCRIPTION")
	for _, r := range rules {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.ID, r.Target, r.Rule, dash(r.Description))
	}
}

// printRules prints v (a rule or a list) in the selected format; with
// --quiet, a table is just the rule IDs.
func printRules(opts *FirewallOptions, v any, views []RuleView) error {
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		for _, r := range views {
			if _, err := fmt.Fprintln(opts.IO.Out, r.ID); err != nil {
				return err
			}
		}
		return nil
	}
	return pr.Print(v, func(w io.Writer) { ruleTable(w, views) })
}

// NewCmdFirewallAdd builds `computectl firewall add`.
func NewCmdFirewallAdd(f *Factory, runF func(*FirewallOptions) error) *cobra.Command {
	opts := newFirewallOptions(f)
	return &cobra.Command{
		Use:   "add TARGET RULE",
		Short: "Add an ingress rule to an instance or a cluster",
		Long: `Add an ingress rule. The words after TARGET form the rule, so quoting it is
optional. Adding a rule that exists changes nothing.

` + ruleSyntax,
		Example: `  computectl firewall add web tcp:443 from 0.0.0.0/0
  computectl firewall add web 'tcp:22 from 192.0.2.10/32 # office'
  computectl firewall add cluster:train udp:9000-9100 from cluster:web`,
		Args:              usageArgs(cobra.MinimumNArgs(2)),
		ValidArgsFunction: completeInstanceNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Target = args[0]
			opts.Rules = []string{strings.Join(args[1:], " ")}
			if runF != nil {
				return runF(opts)
			}
			return firewallAddRun(cmd.Context(), opts)
		},
	}
}

func firewallAddRun(ctx context.Context, opts *FirewallOptions) error {
	ta, err := parseTarget(opts.Target)
	if err != nil {
		return err
	}
	spec, err := parseRule("rule", opts.Rules[0])
	if err != nil {
		return err
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	fm, err := firewallOf(p)
	if err != nil {
		return err
	}
	target, err := ta.resolve(ctx, p)
	if err != nil {
		return err
	}
	r, err := fm.AddRule(ctx, target, spec)
	if err != nil {
		return err
	}
	views := viewRules([]compute.FirewallRule{*r})
	return printRules(opts, views[0], views)
}

// NewCmdFirewallList builds `computectl firewall list`.
func NewCmdFirewallList(f *Factory, runF func(*FirewallOptions) error) *cobra.Command {
	opts := newFirewallOptions(f)
	return &cobra.Command{
		Use:     "list [TARGET]",
		Aliases: []string{"ls"},
		Short:   "List the rules of a target, or of every target",
		Long: `List the rules of an instance or a cluster, sorted by ID. Without TARGET,
list the rules of every cluster and instance. An instance is reachable from
outside only as its own rules and its cluster's rules allow.

` + ruleSyntax,
		Example: `  computectl firewall list web
  computectl firewall list cluster:train -o json
  computectl firewall list`,
		Args:              usageArgs(cobra.MaximumNArgs(1)),
		ValidArgsFunction: completeInstanceNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.Target = args[0]
			}
			if runF != nil {
				return runF(opts)
			}
			return firewallListRun(cmd.Context(), opts)
		},
	}
}

func firewallListRun(ctx context.Context, opts *FirewallOptions) error {
	var ta targetArg
	if opts.Target != "" {
		var err error
		if ta, err = parseTarget(opts.Target); err != nil {
			return err
		}
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	fm, err := firewallOf(p)
	if err != nil {
		return err
	}
	var targets []compute.Target
	if opts.Target != "" {
		t, err := ta.resolve(ctx, p)
		if err != nil {
			return err
		}
		targets = []compute.Target{t}
	} else {
		clusters, err := p.ListClusters(ctx)
		if err != nil {
			return err
		}
		for _, c := range clusters {
			targets = append(targets, compute.ClusterTarget(c.Name))
		}
		insts, err := p.ListInstances(ctx, compute.ListOptions{})
		if err != nil {
			return err
		}
		for _, inst := range insts {
			targets = append(targets, compute.InstanceTarget(inst.ID))
		}
	}
	all := []compute.FirewallRule{}
	for _, t := range targets {
		rules, err := fm.ListRules(ctx, t)
		if err != nil {
			return err
		}
		all = append(all, rules...)
	}
	if opts.Target == "" {
		sort.SliceStable(all, func(i, j int) bool { return all[i].Target.String() < all[j].Target.String() })
	}
	views := viewRules(all)
	return printRules(opts, views, views)
}

// NewCmdFirewallRevoke builds `computectl firewall revoke`.
func NewCmdFirewallRevoke(f *Factory, runF func(*FirewallOptions) error) *cobra.Command {
	opts := newFirewallOptions(f)
	return &cobra.Command{
		Use:     "revoke RULE-ID...",
		Aliases: []string{"rm", "delete"},
		Short:   "Revoke rules by ID",
		Long: `Revoke rules by ID (see computectl firewall list). What a revoked rule
allowed is closed when the command returns, unless another rule allows it.`,
		Example: "  computectl firewall revoke fw-0123456789abcdef",
		Args:    usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.RuleIDs = args
			if runF != nil {
				return runF(opts)
			}
			return firewallRevokeRun(cmd.Context(), opts)
		},
	}
}

func firewallRevokeRun(ctx context.Context, opts *FirewallOptions) error {
	for _, id := range opts.RuleIDs {
		if !strings.HasPrefix(id, "fw-") || len(id) < 4 {
			return compute.InvalidField("RULE-ID", id, `must be a rule ID like fw-0123456789abcdef (see computectl firewall list)`)
		}
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	fm, err := firewallOf(p)
	if err != nil {
		return err
	}
	type revoked struct {
		ID     string `json:"id"`
		Action string `json:"action"`
	}
	out := []revoked{}
	for _, id := range opts.RuleIDs {
		if err := fm.RevokeRule(ctx, id); err != nil {
			return fmt.Errorf("revoke %s: %w", id, err)
		}
		out = append(out, revoked{ID: id, Action: "revoke"})
	}
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		return nil
	}
	return pr.Print(out, func(w io.Writer) {
		fmt.Fprintln(w, "ID\tACTION")
		for _, r := range out {
			fmt.Fprintf(w, "%s\t%s\n", r.ID, r.Action)
		}
	})
}

// NewCmdFirewallSet builds `computectl firewall set`.
func NewCmdFirewallSet(f *Factory, runF func(*FirewallOptions) error) *cobra.Command {
	opts := newFirewallOptions(f)
	cmd := &cobra.Command{
		Use:   "set TARGET (--rule RULE... | -f FILE | --none)",
		Short: "Make a target's rules exactly the given set",
		Long: `Converge a target's rules to exactly the given set: rules not in it are
revoked, missing ones added, the rest untouched. Running it again changes
nothing. Rules come from --rule (repeatable) and/or -f FILE (one rule per
line, # comments; - for stdin). --none revokes every rule of the target.

` + ruleSyntax,
		Example: `  computectl firewall set web --rule 'tcp:22 from 192.0.2.10/32' --rule 'tcp:443 from 0.0.0.0/0'
  computectl firewall set cluster:train -f train.rules
  computectl firewall set web --none`,
		Args:              usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: completeInstanceNames(f),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Target = args[0]
			if runF != nil {
				return runF(opts)
			}
			return firewallSetRun(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.Rules, "rule", nil, "a rule of the set (repeatable)")
	cmd.Flags().StringVarP(&opts.File, "file", "f", "", "read rules from FILE, one per line (- for stdin)")
	cmd.Flags().BoolVar(&opts.None, "none", false, "revoke every rule of the target")
	return cmd
}

func firewallSetRun(ctx context.Context, opts *FirewallOptions) error {
	ta, err := parseTarget(opts.Target)
	if err != nil {
		return err
	}
	texts := append([]string(nil), opts.Rules...)
	if opts.File != "" {
		lines, err := readRuleFile(opts.File, opts.IO.In)
		if err != nil {
			return err
		}
		texts = append(texts, lines...)
	}
	switch {
	case opts.None && (len(opts.Rules) > 0 || opts.File != ""):
		return flagErrorf("--none cannot be combined with --rule or --file")
	case !opts.None && len(opts.Rules) == 0 && opts.File == "":
		// An empty set revokes everything: make the user say so.
		return flagErrorf("give the rules with --rule or --file, or --none to revoke every rule")
	}
	specs, err := parseRules("rule", texts)
	if err != nil {
		return err
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	fm, err := firewallOf(p)
	if err != nil {
		return err
	}
	target, err := ta.resolve(ctx, p)
	if err != nil {
		return err
	}
	rules, err := fm.SetRules(ctx, target, specs)
	if err != nil {
		return err
	}
	if rules == nil {
		rules = []compute.FirewallRule{}
	}
	views := viewRules(rules)
	return printRules(opts, views, views)
}
