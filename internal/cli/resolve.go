package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/compute-sdk/compute"
	"github.com/spf13/cobra"
)

// resolveInstance finds the instance an argument names: an exact ID, else
// a unique name. Names are not unique on every provider, so a name that
// matches several instances is an error listing their IDs.
func resolveInstance(ctx context.Context, p compute.Provider, arg string) (*compute.Instance, error) {
	list, err := p.ListInstances(ctx, compute.ListOptions{})
	if err != nil {
		return nil, err
	}
	var byName []*compute.Instance
	for _, inst := range list {
		if inst.ID == arg {
			return inst, nil
		}
		if inst.Name == arg {
			byName = append(byName, inst)
		}
	}
	switch len(byName) {
	case 1:
		return byName[0], nil
	case 0:
		// Not listed: it may still be an ID the list does not show (an
		// instance terminating, or a provider whose list is filtered).
		inst, err := p.GetInstance(ctx, arg)
		if errors.Is(err, compute.ErrNotFound) || errors.Is(err, compute.ErrInvalidArgument) {
			return nil, fmt.Errorf("instance %q: %w", arg, compute.ErrNotFound)
		}
		return inst, err
	}
	ids := make([]string, len(byName))
	for i, inst := range byName {
		ids[i] = inst.ID
	}
	return nil, compute.InvalidField("instance", arg, "name is ambiguous, use one of the IDs "+strings.Join(ids, ", "))
}

// resolveInstances resolves every argument before anything is changed, so
// one bad name fails the whole command with nothing done.
func resolveInstances(ctx context.Context, p compute.Provider, args []string) ([]*compute.Instance, error) {
	out := make([]*compute.Instance, 0, len(args))
	seen := map[string]bool{}
	for _, a := range args {
		inst, err := resolveInstance(ctx, p, a)
		if err != nil {
			return nil, err
		}
		if !seen[inst.ID] {
			seen[inst.ID] = true
			out = append(out, inst)
		}
	}
	return out, nil
}

// targetArg is a parsed firewall TARGET: NAME, instance:NAME or
// cluster:NAME. Instance names are resolved to IDs later, against the
// provider.
type targetArg struct {
	kind compute.TargetKind
	name string
}

func parseTarget(s string) (targetArg, error) {
	kind, name := compute.TargetInstance, s
	if k, n, ok := strings.Cut(s, ":"); ok {
		switch compute.TargetKind(k) {
		case compute.TargetInstance, compute.TargetCluster:
			kind, name = compute.TargetKind(k), n
		default:
			return targetArg{}, compute.InvalidField("target", s, `must be NAME, instance:NAME or cluster:NAME`)
		}
	}
	if name == "" {
		return targetArg{}, compute.InvalidField("target", s, "names nothing")
	}
	if kind == compute.TargetCluster {
		if err := compute.ValidateName("cluster", name); err != nil {
			return targetArg{}, err
		}
	}
	return targetArg{kind: kind, name: name}, nil
}

// resolve returns the compute.Target, looking instance names up.
func (t targetArg) resolve(ctx context.Context, p compute.Provider) (compute.Target, error) {
	if t.kind == compute.TargetCluster {
		return compute.ClusterTarget(t.name), nil
	}
	inst, err := resolveInstance(ctx, p, t.name)
	if err != nil {
		return compute.Target{}, err
	}
	return compute.InstanceTarget(inst.ID), nil
}

// firewallOf returns p's FirewallManager or an ErrUnsupported error.
func firewallOf(p compute.Provider) (compute.FirewallManager, error) {
	fm, ok := p.(compute.FirewallManager)
	if !ok {
		return nil, fmt.Errorf("provider %s cannot change rules after creation (rules are set with create --allow): %w", p.Name(), compute.ErrUnsupported)
	}
	return fm, nil
}

// completeInstanceNames completes instance names for shell completion. It
// opens the provider, which may need root; on any error it offers nothing.
func completeInstanceNames(f *Factory) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		p, err := f.Provider(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		list, err := p.ListInstances(cmd.Context(), compute.ListOptions{})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, inst := range list {
			if strings.HasPrefix(inst.Name, toComplete) {
				out = append(out, cobra.CompletionWithDesc(inst.Name, inst.ID+" "+string(inst.Status)))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeClusterNames completes cluster names.
func completeClusterNames(f *Factory) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		p, err := f.Provider(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		list, err := p.ListClusters(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, c := range list {
			if strings.HasPrefix(c.Name, toComplete) {
				out = append(out, c.Name)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
