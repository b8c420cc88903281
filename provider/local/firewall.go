package local

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
	"github.com/compute-sdk/compute/provider/local/internal/network"
)

// checkSourceClusters verifies that every source cluster exists (runs
// under the lock).
func (p *Provider) checkSourceClusters(specs []compute.RuleSpec) error {
	for i, s := range specs {
		for _, c := range s.SourceClusters {
			if _, err := p.st.cluster(c); err != nil {
				if errors.Is(err, compute.ErrNotFound) {
					return fmt.Errorf("rules[%d]: source cluster %q: %w", i, c, compute.ErrNotFound)
				}
				return err
			}
		}
	}
	return nil
}

// allows compiles rules into the network package's allowances. A source
// cluster becomes that cluster's bridge: anti-spoofing binds each bridge
// port to its instance's address and MAC, so "arrived from this bridge"
// means "sent by a member".
func (p *Provider) allows(rules []compute.FirewallRule) ([]network.Allow, error) {
	specs := make([]compute.RuleSpec, len(rules))
	for i, r := range rules {
		specs[i] = r.RuleSpec
	}
	var out []network.Allow
	for _, e := range policy.Compile(specs) {
		a := network.Allow{Protocol: e.Protocol, Ports: e.Ports, Source: e.Source}
		if e.Cluster != "" {
			c, err := p.st.cluster(e.Cluster)
			if errors.Is(err, compute.ErrNotFound) {
				continue // matches nobody: DeleteCluster refuses while rules name it
			}
			if err != nil {
				return nil, err
			}
			a.Source, a.SourceBridge = netip.Prefix{}, c.Bridge
		}
		out = append(out, a)
	}
	return out, nil
}

func (p *Provider) applyInstance(ctx context.Context, rec *instanceRecord, rules []compute.FirewallRule) error {
	a, err := p.allows(rules)
	if err != nil {
		return err
	}
	if err := p.net.SetInstanceRules(ctx, hexID(rec.ID), rec.Addr, a); err != nil {
		return fmt.Errorf("local: rules of %s: %w", rec.ID, err)
	}
	return nil
}

func (p *Provider) applyCluster(ctx context.Context, c *clusterRecord, rules []compute.FirewallRule) error {
	a, err := p.allows(rules)
	if err != nil {
		return err
	}
	if err := p.net.SetBridgeRules(ctx, c.Bridge, a); err != nil {
		return fmt.Errorf("local: rules of cluster %s: %w", c.Name, err)
	}
	return nil
}

// apply pushes target's stored rules to the kernel (under the lock).
func (p *Provider) apply(ctx context.Context, t compute.Target, rules []compute.FirewallRule) error {
	switch t.Kind {
	case compute.TargetInstance:
		rec, err := p.st.instance(t.Name)
		if err != nil {
			return err
		}
		return p.applyInstance(ctx, rec, rules)
	default:
		c, err := p.st.cluster(t.Name)
		if err != nil {
			return err
		}
		return p.applyCluster(ctx, c, rules)
	}
}

// checkTarget verifies that t names an existing instance or cluster.
func (p *Provider) checkTarget(t compute.Target) error {
	if err := t.Validate(); err != nil {
		return err
	}
	var err error
	if t.Kind == compute.TargetInstance {
		var rec *instanceRecord
		if rec, err = p.st.instance(t.Name); err == nil && rec.State == stateTerminating {
			err = fmt.Errorf("instance %s is terminating: %w", t.Name, compute.ErrNotFound)
		}
	} else {
		_, err = p.st.cluster(t.Name)
	}
	return err
}

// ListRules lists the rules of target, sorted by ID.
func (p *Provider) ListRules(ctx context.Context, target compute.Target) ([]compute.FirewallRule, error) {
	if err := p.checkTarget(target); err != nil {
		return nil, err
	}
	rs, err := p.st.rules(target)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(rs, func(a, b compute.FirewallRule) int { return strings.Compare(a.ID, b.ID) })
	if rs == nil {
		rs = []compute.FirewallRule{}
	}
	return rs, nil
}

// AddRule adds a rule to target and applies it before returning.
func (p *Provider) AddRule(ctx context.Context, target compute.Target, spec compute.RuleSpec) (*compute.FirewallRule, error) {
	r, err := policy.NewRule(target, spec)
	if err != nil {
		return nil, err
	}
	err = p.withLock(func() error {
		if err := p.checkTarget(target); err != nil {
			return err
		}
		if err := p.checkSourceClusters([]compute.RuleSpec{spec}); err != nil {
			return err
		}
		rs, err := p.st.rules(target)
		if err != nil {
			return err
		}
		for _, old := range rs {
			if old.ID == r.ID {
				r = old
				return nil
			}
		}
		next := append(slices.Clone(rs), r)
		if err := p.apply(ctx, target, next); err != nil {
			return err
		}
		return p.st.setRules(target, next)
	})
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// RevokeRule removes the rule with the given ID from whichever target
// holds it, and applies the remaining rules before returning.
func (p *Provider) RevokeRule(ctx context.Context, id string) error {
	return p.withLock(func() error {
		all, err := p.st.allRules()
		if err != nil {
			return err
		}
		for _, r := range all {
			if r.ID != id {
				continue
			}
			rs, err := p.st.rules(r.Target)
			if err != nil {
				return err
			}
			next := slices.DeleteFunc(slices.Clone(rs), func(x compute.FirewallRule) bool { return x.ID == id })
			// Close first, then forget: a crash in between leaves the
			// rule recorded but not enforced, never the reverse.
			if err := p.apply(ctx, r.Target, next); err != nil && !errors.Is(err, compute.ErrNotFound) {
				return err
			}
			return p.st.setRules(r.Target, next)
		}
		return fmt.Errorf("rule %q: %w", id, compute.ErrNotFound)
	})
}

// SetRules converges target's rules to exactly specs.
func (p *Provider) SetRules(ctx context.Context, target compute.Target, specs []compute.RuleSpec) ([]compute.FirewallRule, error) {
	rules, err := policy.NewRules(target, specs)
	if err != nil {
		return nil, err
	}
	err = p.withLock(func() error {
		if err := p.checkTarget(target); err != nil {
			return err
		}
		if err := p.checkSourceClusters(specs); err != nil {
			return err
		}
		if err := p.apply(ctx, target, rules); err != nil {
			return err
		}
		return p.st.setRules(target, rules)
	})
	if err != nil {
		return nil, err
	}
	return rules, nil
}
