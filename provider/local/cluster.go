package local

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/compute-sdk/compute"
)

// CreateCluster creates an empty cluster: a bridge and a /24 of its own.
func (p *Provider) CreateCluster(ctx context.Context, spec compute.ClusterSpec) (*compute.Cluster, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	var rec *clusterRecord
	err := p.withLock(func() error {
		if _, err := p.st.cluster(spec.Name); err == nil {
			return fmt.Errorf("cluster %q exists: %w", spec.Name, compute.ErrConflict)
		}
		recs, err := p.st.instances()
		if err != nil {
			return err
		}
		clusters, err := p.st.clusters()
		if err != nil {
			return err
		}
		subnet, err := p.freeSubnet(recs, clusters)
		if err != nil {
			return err
		}
		br := p.bridgeName(spec.Name)
		for _, c := range clusters {
			if c.Bridge == br {
				return fmt.Errorf("local: bridge name %s of cluster %q collides with cluster %q: %w", br, spec.Name, c.Name, compute.ErrConflict)
			}
		}
		rec = &clusterRecord{
			Name: spec.Name, ID: "c-" + strings.TrimPrefix(br, p.cfg.Prefix+"b"), Labels: spec.Labels,
			CreatedAt: time.Now().UTC(), Subnet: subnet, Bridge: br,
		}
		if err := p.net.EnsureBridge(ctx, br, subnet); err != nil {
			p.net.DeleteBridge(context.WithoutCancel(ctx), br)
			return fmt.Errorf("local: bridge: %w", err)
		}
		if err := p.st.write("clusters", spec.Name, rec); err != nil {
			p.net.DeleteBridge(context.WithoutCancel(ctx), br)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p.toCluster(rec), nil
}

func (p *Provider) toCluster(r *clusterRecord) *compute.Cluster {
	return &compute.Cluster{
		Name: r.Name, ID: r.ID, Provider: "local", Labels: r.Labels, CreatedAt: r.CreatedAt,
		Subnets: []netip.Prefix{r.Subnet},
	}
}

// GetCluster returns the named cluster.
func (p *Provider) GetCluster(ctx context.Context, name string) (*compute.Cluster, error) {
	r, err := p.st.cluster(name)
	if err != nil {
		return nil, err
	}
	return p.toCluster(r), nil
}

// ListClusters lists clusters sorted by name.
func (p *Provider) ListClusters(ctx context.Context) ([]*compute.Cluster, error) {
	recs, err := p.st.clusters()
	if err != nil {
		return nil, err
	}
	out := make([]*compute.Cluster, 0, len(recs))
	for _, r := range recs {
		out = append(out, p.toCluster(r))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteCluster deletes an empty cluster, its bridge and its rules. It
// fails with ErrConflict while the cluster has members or while a rule of
// another target names it as a source (a later cluster of the same name
// would otherwise inherit that access).
func (p *Provider) DeleteCluster(ctx context.Context, name string) error {
	return p.withLock(func() error {
		rec, err := p.st.cluster(name)
		if err != nil {
			return err
		}
		recs, err := p.st.instances()
		if err != nil {
			return err
		}
		var members []string
		for _, r := range recs {
			if r.Cluster == name {
				members = append(members, r.ID)
			}
		}
		if len(members) > 0 {
			return fmt.Errorf("cluster %q has members %v: %w", name, members, compute.ErrConflict)
		}
		rules, err := p.st.allRules()
		if err != nil {
			return err
		}
		for _, r := range rules {
			if slices.Contains(r.SourceClusters, name) && r.Target != compute.ClusterTarget(name) {
				return fmt.Errorf("cluster %q is the source of rule %s on %s: %w", name, r.ID, r.Target, compute.ErrConflict)
			}
		}
		if err := p.net.DeleteBridge(ctx, rec.Bridge); err != nil {
			return err
		}
		if err := p.st.setRules(compute.ClusterTarget(name), nil); err != nil {
			return err
		}
		return p.st.remove("clusters", name)
	})
}
