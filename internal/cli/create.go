package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
	"github.com/spf13/cobra"
)

// CreateOptions are the inputs of `computectl create`.
type CreateOptions struct {
	IO       *IOStreams
	Provider func(context.Context) (compute.Provider, error)
	Printer  func() *Printer
	HomeDir  func() string

	Name      string
	Cluster   string
	KeyFiles  []string
	Allow     []string
	RefID     string
	Type      string
	Image     string
	Labels    []string
	Wait      bool
	Timeout   time.Duration
	NoSSHRule bool
}

// NewCmdCreate builds `computectl create`.
func NewCmdCreate(f *Factory, runF func(*CreateOptions) error) *cobra.Command {
	opts := &CreateOptions{IO: f.IOStreams, Provider: f.Provider, Printer: f.Printer, HomeDir: f.HomeDir}
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an instance",
		Long: `Create an instance and print it.

The instance accepts no inbound traffic except what rules allow. Unless
--no-ssh-rule is given (or an --allow rule already opens tcp:22), create adds
one rule allowing SSH (tcp:22) from this host only, as the provider sees it;
a provider that cannot tell this host's address gets no such rule, and create
says so. Nothing is ever opened to the world unless you write the rule.

The SSH public keys come from --ssh-key (a file of authorized_keys lines, or
- for stdin; repeatable), else the first of ~/.ssh/id_ed25519.pub,
id_ecdsa.pub, id_rsa.pub. Rules use the syntax of "computectl firewall":
  tcp:8080-8090 from 10.0.0.0/8,2001:db8::/32
  udp:53 from cluster:train
  icmp from 192.168.0.0/16  # a description

Creating is idempotent by --ref-id (or NAME when it is not given): running
the same create twice returns the same instance.`,
		Example: `  computectl create web --wait
  computectl create w1 --cluster train --ssh-key ~/.ssh/work.pub
  computectl create api --allow 'tcp:443 from 0.0.0.0/0' --label env=dev
  cat key.pub | computectl create box --ssh-key - --no-ssh-rule -o json`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if runF != nil {
				return runF(opts)
			}
			return createRun(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Cluster, "cluster", "", "join this existing cluster")
	fl.StringArrayVar(&opts.KeyFiles, "ssh-key", nil, "SSH public key file, or - for stdin (repeatable)")
	fl.StringArrayVar(&opts.Allow, "allow", nil, "ingress rule, e.g. 'tcp:443 from 0.0.0.0/0' (repeatable)")
	fl.StringVar(&opts.RefID, "ref-id", "", "idempotency key (default NAME)")
	fl.StringVar(&opts.Type, "type", "", "instance type (see computectl types)")
	fl.StringVar(&opts.Image, "image", "", "image (default: the provider's)")
	fl.StringArrayVar(&opts.Labels, "label", nil, "label key=value (repeatable)")
	fl.BoolVar(&opts.Wait, "wait", false, "wait until the instance is running")
	fl.DurationVar(&opts.Timeout, "timeout", 5*time.Minute, "how long --wait waits")
	fl.BoolVar(&opts.NoSSHRule, "no-ssh-rule", false, "do not open tcp:22 to this host")
	_ = cmd.RegisterFlagCompletionFunc("cluster", completeClusterNames(f))
	return cmd
}

// spec builds and validates the instance spec, without the default SSH
// rule. It makes no provider call.
func (opts *CreateOptions) spec() (compute.InstanceSpec, error) {
	if err := compute.ValidateName("name", opts.Name); err != nil {
		return compute.InstanceSpec{}, err
	}
	if opts.Cluster != "" {
		if err := compute.ValidateName("--cluster", opts.Cluster); err != nil {
			return compute.InstanceSpec{}, err
		}
	}
	rules, err := parseRules("--allow", opts.Allow)
	if err != nil {
		return compute.InstanceSpec{}, err
	}
	labels, err := parseLabels(opts.Labels)
	if err != nil {
		return compute.InstanceSpec{}, err
	}
	keys, err := readSSHKeys(opts.KeyFiles, opts.IO.In, opts.HomeDir())
	if err != nil {
		return compute.InstanceSpec{}, err
	}
	spec := compute.InstanceSpec{
		Name:    opts.Name,
		RefID:   opts.RefID,
		Cluster: opts.Cluster,
		Image:   opts.Image,
		Type:    opts.Type,
		SSHKeys: keys,
		Rules:   rules,
		Labels:  labels,
	}
	if err := policy.ValidateInstanceSpec(spec); err != nil {
		return compute.InstanceSpec{}, err
	}
	return spec, nil
}

// sshRule returns the default rule: tcp:22 from the calling host only, or
// nil (and why) when there is nothing to add.
func sshRule(ctx context.Context, p compute.Provider) (*compute.RuleSpec, string) {
	cp, ok := p.(compute.CallerPrefixer)
	if !ok {
		return nil, fmt.Sprintf("provider %s cannot tell this host's address, so no port is open; add one with --allow 'tcp:22 from <your-address>/32'", p.Name())
	}
	prefixes, err := cp.CallerPrefixes(ctx)
	if err != nil || len(prefixes) == 0 {
		why := "it reported none"
		if err != nil {
			why = err.Error()
		}
		return nil, fmt.Sprintf("could not tell this host's address (%s), so no port is open; add one with --allow 'tcp:22 from <your-address>/32'", why)
	}
	for _, pfx := range prefixes {
		// The default must never open more than this host: refuse a
		// provider answer wider than one address.
		if !pfx.IsSingleIP() {
			return nil, fmt.Sprintf("provider %s reported %s for this host, which is more than one address; opened nothing", p.Name(), pfx)
		}
	}
	return &compute.RuleSpec{
		Protocol:    compute.ProtocolTCP,
		Ports:       compute.Port(22),
		SourceCIDRs: prefixes,
		Description: "ssh from the host that ran computectl create",
	}, ""
}

func createRun(ctx context.Context, opts *CreateOptions) error {
	spec, err := opts.spec()
	if err != nil {
		return err
	}
	p, err := opts.Provider(ctx)
	if err != nil {
		return err
	}
	if spec.Cluster != "" {
		// A clear "cluster not found" before anything is created.
		if _, err := p.GetCluster(ctx, spec.Cluster); err != nil {
			return err
		}
	}
	switch {
	case opts.NoSSHRule:
		if !opensSSH(spec.Rules) {
			opts.IO.Notef("no port is open (--no-ssh-rule)")
		}
	case opensSSH(spec.Rules):
		// The user wrote a rule for SSH: theirs is the only one.
	default:
		rule, why := sshRule(ctx, p)
		if rule == nil {
			opts.IO.Notef("%s", why)
			break
		}
		spec.Rules = append(spec.Rules, *rule)
		opts.IO.Notef("opened tcp:22 to %s (this host); use --no-ssh-rule to open nothing", joinPrefixes(rule.SourceCIDRs))
	}

	prog := opts.IO.StartProgress("creating " + spec.Name)
	defer prog.Stop()
	inst, err := p.CreateInstance(ctx, spec)
	if err != nil {
		return err
	}
	if opts.Wait && inst.Status != compute.StatusRunning {
		prog.Step("waiting for " + spec.Name + " (" + inst.ID + ") to be running")
		wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
		got, err := compute.Wait(wctx, p, inst.ID, compute.StatusRunning)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("instance %s was created but is not running after %s (see computectl get %s): %w", inst.ID, opts.Timeout, inst.ID, err)
			}
			return fmt.Errorf("instance %s was created but did not start: %w", inst.ID, err)
		}
		inst = got
	}
	prog.Stop()
	pr := opts.Printer()
	if opts.IO.quiet && !pr.Structured() {
		_, err := fmt.Fprintln(opts.IO.Out, inst.ID)
		return err
	}
	return pr.Print(inst, func(w io.Writer) { instanceTable(w, []*compute.Instance{inst}) })
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
