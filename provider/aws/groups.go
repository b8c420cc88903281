package aws

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/compute-sdk/compute"
)

// group is a security group as far as compute cares.
type group struct {
	ID   string
	Name string
	VPC  string
	Tags map[string]string
}

func groupOf(g types.SecurityGroup) group {
	return group{
		ID:   awssdk.ToString(g.GroupId),
		Name: awssdk.ToString(g.GroupName),
		VPC:  awssdk.ToString(g.VpcId),
		Tags: tagMap(g.Tags),
	}
}

// describeGroups lists security groups matching filters. Unless foreign is
// set, only groups this provider owns are returned.
func (p *Provider) describeGroups(ctx context.Context, foreign bool, filters ...types.Filter) ([]group, error) {
	if !foreign {
		filters = append(filters, p.ownerFilter())
	}
	if p.cfg.VPCID != "" {
		filters = append(filters, filter("vpc-id", p.cfg.VPCID))
	}
	var out []group
	pg := ec2.NewDescribeSecurityGroupsPaginator(p.ec2, &ec2.DescribeSecurityGroupsInput{Filters: filters})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, mapErr("describe security groups", err)
		}
		for _, g := range page.SecurityGroups {
			out = append(out, groupOf(g))
		}
	}
	return out, nil
}

// clusterGroup returns the security group of the named cluster.
func (p *Provider) clusterGroup(ctx context.Context, name string) (group, error) {
	gs, err := p.describeGroups(ctx, false, filter("tag:"+tagKind, kindCluster), filter("tag:"+tagCluster, name))
	if err != nil {
		return group{}, err
	}
	if len(gs) == 0 {
		return group{}, fmt.Errorf("aws: cluster %q: %w", name, compute.ErrNotFound)
	}
	if len(gs) > 1 {
		return group{}, fmt.Errorf("aws: cluster %q has %d security groups; remove the extra ones: %w", name, len(gs), compute.ErrConflict)
	}
	return gs[0], nil
}

// clusterGroups returns every cluster's security group by cluster name.
func (p *Provider) clusterGroups(ctx context.Context) (map[string]group, error) {
	gs, err := p.describeGroups(ctx, false, filter("tag:"+tagKind, kindCluster))
	if err != nil {
		return nil, err
	}
	m := make(map[string]group, len(gs))
	for _, g := range gs {
		m[g.Tags[tagCluster]] = g
	}
	return m, nil
}

// createGroup creates a security group with the given tags. If a group of
// that name exists already and is ours with the same compute:kind (a
// retried or concurrent create), it is returned instead, with created
// false.
func (p *Provider) createGroup(ctx context.Context, name, desc string, tags map[string]string) (g group, created bool, err error) {
	in := &ec2.CreateSecurityGroupInput{
		GroupName:         awssdk.String(name),
		Description:       awssdk.String(desc),
		TagSpecifications: []types.TagSpecification{tagSpec(types.ResourceTypeSecurityGroup, tags)},
	}
	if p.cfg.VPCID != "" {
		in.VpcId = awssdk.String(p.cfg.VPCID)
	}
	out, err := p.ec2.CreateSecurityGroup(ctx, in)
	if err == nil {
		return group{ID: awssdk.ToString(out.GroupId), Name: name, VPC: p.cfg.VPCID, Tags: tags}, true, nil
	}
	if apiCode(err) != "InvalidGroup.Duplicate" {
		return group{}, false, mapErr("create security group "+name, err)
	}
	gs, derr := p.describeGroups(ctx, true, filter("group-name", name))
	if derr != nil {
		return group{}, false, derr
	}
	for _, g := range gs {
		if g.Tags[tagOwner] == p.cfg.Owner && g.Tags[tagKind] == tags[tagKind] {
			return g, false, nil
		}
	}
	return group{}, false, fmt.Errorf("aws: security group %q exists and is not this provider's: %w", name, compute.ErrConflict)
}

// maxDeleteAttempts bounds the DependencyViolation retries of deleteGroup.
// With the default 5s poll interval the backoff reaches a few minutes in
// all, which is how long EC2 can take to release a terminated instance's
// network interface.
const maxDeleteAttempts = 10

// deleteGroup deletes a security group, retrying while EC2 still reports
// a dependency (the network interface of an instance that has just
// terminated). A group that is already gone is not an error.
func (p *Provider) deleteGroup(ctx context.Context, id string) error {
	delay := p.cfg.PollInterval
	for attempt := 1; ; attempt++ {
		_, err := p.ec2.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: awssdk.String(id)})
		switch {
		case err == nil:
			return nil
		case apiCode(err) == "InvalidGroup.NotFound":
			return nil
		case apiCode(err) != "DependencyViolation" || attempt == maxDeleteAttempts:
			return mapErr("delete security group "+id, err)
		}
		p.log.Debug("security group still in use; retrying", "group", id, "attempt", attempt, "delay", delay)
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("aws: delete security group %s: %w", id, err)
		}
		delay = min(2*delay, 16*p.cfg.PollInterval)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ensureEgress makes sure the group allows all outbound traffic over IPv4
// and IPv6. EC2 adds the IPv4 rule to every new group but not the IPv6 one.
func (p *Provider) ensureEgress(ctx context.Context, id string) error {
	all := awssdk.String("-1")
	perms := []types.IpPermission{
		{IpProtocol: all, IpRanges: []types.IpRange{{CidrIp: awssdk.String("0.0.0.0/0")}}},
		{IpProtocol: all, Ipv6Ranges: []types.Ipv6Range{{CidrIpv6: awssdk.String("::/0")}}},
	}
	for _, perm := range perms {
		_, err := p.ec2.AuthorizeSecurityGroupEgress(ctx, &ec2.AuthorizeSecurityGroupEgressInput{
			GroupId:       awssdk.String(id),
			IpPermissions: []types.IpPermission{perm},
			TagSpecifications: []types.TagSpecification{
				tagSpec(types.ResourceTypeSecurityGroupRule, map[string]string{tagOwner: p.cfg.Owner, tagBase: "egress"}),
			},
		})
		if err != nil && apiCode(err) != "InvalidPermission.Duplicate" {
			return mapErr("authorize egress on "+id, err)
		}
	}
	return nil
}

// CreateCluster creates the cluster's security group: owned by compute,
// with one ingress rule letting members reach each other on every
// protocol, and nothing else.
func (p *Provider) CreateCluster(ctx context.Context, spec compute.ClusterSpec) (*compute.Cluster, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	switch _, err := p.clusterGroup(ctx, spec.Name); {
	case err == nil:
		return nil, fmt.Errorf("aws: cluster %q exists: %w", spec.Name, compute.ErrConflict)
	case !errors.Is(err, compute.ErrNotFound):
		return nil, err
	}
	tags := map[string]string{
		tagOwner:   p.cfg.Owner,
		tagKind:    kindCluster,
		tagCluster: spec.Name,
		tagCreated: time.Now().UTC().Format(time.RFC3339),
	}
	for k, v := range spec.Labels {
		tags[tagLabelPrefix+k] = v
	}
	g, created, err := p.createGroup(ctx, clusterGroupName(spec.Name), "compute cluster "+spec.Name, tags)
	if err != nil {
		return nil, err
	}
	if !created {
		// A concurrent CreateCluster of the same name won the race.
		return nil, fmt.Errorf("aws: cluster %q exists: %w", spec.Name, compute.ErrConflict)
	}
	tg := targetGroup{target: compute.ClusterTarget(spec.Name), group: g, cluster: spec.Name}
	if err := p.apply(ctx, tg, nil, true); err != nil {
		if derr := p.deleteGroup(context.WithoutCancel(ctx), g.ID); derr != nil {
			p.log.Warn("cleanup after a failed cluster create", "group", g.ID, "err", derr)
		}
		return nil, err
	}
	return p.clusterOf(g), nil
}

func (p *Provider) clusterOf(g group) *compute.Cluster {
	c := &compute.Cluster{
		Name:     g.Tags[tagCluster],
		ID:       g.ID,
		Provider: Name,
		Labels:   labelsFrom(g.Tags),
	}
	c.CreatedAt, _ = time.Parse(time.RFC3339, g.Tags[tagCreated])
	return c
}

// GetCluster returns the named cluster.
func (p *Provider) GetCluster(ctx context.Context, name string) (*compute.Cluster, error) {
	g, err := p.clusterGroup(ctx, name)
	if err != nil {
		return nil, err
	}
	return p.clusterOf(g), nil
}

// ListClusters lists clusters sorted by name.
func (p *Provider) ListClusters(ctx context.Context) ([]*compute.Cluster, error) {
	m, err := p.clusterGroups(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*compute.Cluster, 0, len(m))
	for _, g := range m {
		out = append(out, p.clusterOf(g))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteCluster deletes the cluster's security group. It fails with
// ErrConflict while the cluster has members or a rule names it as a source.
func (p *Provider) DeleteCluster(ctx context.Context, name string) error {
	g, err := p.clusterGroup(ctx, name)
	if err != nil {
		return err
	}
	members, err := p.describeInstances(ctx, nil, filter("tag:"+tagCluster, name), liveFilter())
	if err != nil {
		return err
	}
	if len(members) > 0 {
		return fmt.Errorf("aws: cluster %q has %d members: %w", name, len(members), compute.ErrConflict)
	}
	refs, err := p.describeGroups(ctx, true, filter("ip-permission.group-id", g.ID))
	if err != nil {
		return err
	}
	for _, r := range refs {
		if r.ID != g.ID {
			return fmt.Errorf("aws: cluster %q is a rule source in security group %s (%s): %w", name, r.ID, r.Name, compute.ErrConflict)
		}
	}
	return p.deleteGroup(ctx, g.ID)
}
