package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
)

// liveFilter keeps instances that exist or are still going away.
func liveFilter() types.Filter {
	return filter("instance-state-name", "pending", "running", "stopping", "stopped", "shutting-down")
}

// describeInstances lists owned instances by ID and/or filters.
func (p *Provider) describeInstances(ctx context.Context, ids []string, filters ...types.Filter) ([]types.Instance, error) {
	in := &ec2.DescribeInstancesInput{InstanceIds: ids, Filters: append(filters, p.ownerFilter())}
	var out []types.Instance
	pg := ec2.NewDescribeInstancesPaginator(p.ec2, in)
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, mapErr("describe instances", err)
		}
		for _, r := range page.Reservations {
			out = append(out, r.Instances...)
		}
	}
	return out, nil
}

// getRaw returns the owned instance with the given ID.
func (p *Provider) getRaw(ctx context.Context, id string) (types.Instance, error) {
	if id == "" {
		return types.Instance{}, compute.InvalidField("id", "", "must not be empty")
	}
	is, err := p.describeInstances(ctx, []string{id})
	if err != nil {
		return types.Instance{}, err
	}
	if len(is) == 0 {
		// An instance without our owner tag is not ours to show.
		return types.Instance{}, fmt.Errorf("aws: instance %q: %w", id, compute.ErrNotFound)
	}
	return is[0], nil
}

func statusOf(s *types.InstanceState) compute.Status {
	if s == nil {
		return compute.StatusPending
	}
	switch s.Name {
	case types.InstanceStateNamePending:
		return compute.StatusPending
	case types.InstanceStateNameRunning:
		return compute.StatusRunning
	case types.InstanceStateNameStopping:
		return compute.StatusStopping
	case types.InstanceStateNameStopped:
		return compute.StatusStopped
	case types.InstanceStateNameShuttingDown:
		return compute.StatusTerminating
	case types.InstanceStateNameTerminated:
		return compute.StatusTerminated
	}
	return compute.StatusFailed
}

// instanceOf converts an EC2 instance, with host keys when known.
func (p *Provider) instanceOf(in types.Instance) *compute.Instance {
	tags := tagMap(in.Tags)
	inst := &compute.Instance{
		ID:       awssdk.ToString(in.InstanceId),
		Name:     tags[tagName],
		RefID:    tags[tagRefID],
		Provider: Name,
		Cluster:  tags[tagCluster],
		Image:    awssdk.ToString(in.ImageId),
		Type:     string(in.InstanceType),
		Status:   statusOf(in.State),
		Labels:   labelsFrom(tags),
	}
	if in.LaunchTime != nil {
		inst.CreatedAt = *in.LaunchTime
	}
	if in.StateReason != nil && inst.Status != compute.StatusRunning {
		inst.StatusReason = awssdk.ToString(in.StateReason.Message)
	}
	for _, s := range []*string{in.PublicIpAddress, in.PrivateIpAddress, in.Ipv6Address} {
		if a, err := netip.ParseAddr(awssdk.ToString(s)); err == nil {
			inst.Addresses = append(inst.Addresses, a)
		}
	}
	inst.SSH = compute.SSHInfo{User: defaultUser, Port: 22}
	if len(inst.Addresses) > 0 {
		inst.SSH.Host = inst.Addresses[0].String()
	}
	p.mu.Lock()
	inst.SSH.HostKeys = slices.Clone(p.hostKeys[inst.ID])
	p.mu.Unlock()
	if len(inst.SSH.HostKeys) == 0 {
		inst.SSH.HostKeys = hostKeysFromTags(tags)
	}
	return inst
}

// hostKeysFromTags reads the host keys a previous GetInstance stored on
// the instance. The console keeps only recent output, so after a reboot or
// a long uptime the tags are where the keys still are.
func hostKeysFromTags(tags map[string]string) []compute.HostKey {
	var keys []compute.HostKey
	for i := 1; ; i++ {
		v, ok := tags[tagHostKeyPrefix+strconv.Itoa(i)]
		if !ok {
			return keys
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(v))
		if err != nil {
			continue
		}
		keys = append(keys, compute.HostKeyOf(pub))
	}
}

// fillHostKeys reads the instance's host keys from its console output
// once they are there. Until then the instance has none, and SSH clients
// that verify (as they must) refuse it.
func (p *Provider) fillHostKeys(ctx context.Context, inst *compute.Instance) {
	if len(inst.SSH.HostKeys) > 0 || inst.Status != compute.StatusRunning {
		// Known already (in memory or in the instance's tags), or the
		// console is not worth reading yet.
		return
	}
	out, err := p.ec2.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: awssdk.String(inst.ID)})
	if err != nil {
		p.log.Debug("console output not available", "instance", inst.ID, "err", err)
		return
	}
	raw, err := base64.StdEncoding.DecodeString(awssdk.ToString(out.Output))
	if err != nil {
		p.log.Warn("console output is not base64", "instance", inst.ID, "err", err)
		return
	}
	keys := parseHostKeys(string(raw))
	if len(keys) == 0 {
		return
	}
	p.mu.Lock()
	p.hostKeys[inst.ID] = keys
	p.mu.Unlock()
	inst.SSH.HostKeys = slices.Clone(keys)
	tags := map[string]string{}
	for i, k := range keys {
		if len(k.PublicKey) <= maxTagValue {
			tags[tagHostKeyPrefix+strconv.Itoa(i+1)] = k.PublicKey
		}
	}
	if _, err := p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{inst.ID}, Tags: tagList(tags)}); err != nil {
		p.log.Warn("storing host keys on the instance", "instance", inst.ID, "err", err)
	}
}

// GetInstance returns the instance with the given ID.
func (p *Provider) GetInstance(ctx context.Context, id string) (*compute.Instance, error) {
	raw, err := p.getRaw(ctx, id)
	if err != nil {
		return nil, err
	}
	inst := p.instanceOf(raw)
	p.fillHostKeys(ctx, inst)
	return inst, nil
}

// ListInstances lists owned instances that are not terminated, sorted by
// name.
func (p *Provider) ListInstances(ctx context.Context, opts compute.ListOptions) ([]*compute.Instance, error) {
	fs := []types.Filter{liveFilter()}
	if opts.Cluster != "" {
		fs = append(fs, filter("tag:"+tagCluster, opts.Cluster))
	}
	raws, err := p.describeInstances(ctx, nil, fs...)
	if err != nil {
		return nil, err
	}
	var out []*compute.Instance
	for _, r := range raws {
		inst := p.instanceOf(r)
		if !opts.Matches(inst) {
			continue
		}
		p.fillHostKeys(ctx, inst)
		out = append(out, inst)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// findByKey returns the live instance created with the idempotency key.
func (p *Provider) findByKey(ctx context.Context, key string) (*types.Instance, error) {
	is, err := p.describeInstances(ctx, nil, filter("tag:"+tagRefID, key), liveFilter())
	if err != nil || len(is) == 0 {
		return nil, err
	}
	return &is[0], nil
}

// CreateInstance launches an instance: its own security group holding the
// spec's rules (and nothing else), its cluster's group, encrypted EBS
// volumes only, IMDSv2 only, and the spec's SSH keys via cloud-init.
func (p *Provider) CreateInstance(ctx context.Context, spec compute.InstanceSpec) (*compute.Instance, error) {
	if err := policy.ValidateInstanceSpec(spec); err != nil {
		return nil, err
	}
	image := spec.Image
	if image == "" {
		image = p.cfg.ImageID
	}
	if image == "" {
		return nil, compute.InvalidField("image", "", "no AMI given and none configured (set Config.ImageID); the provider has no implicit default image")
	}
	itype := spec.Type
	if itype == "" {
		itype = p.cfg.InstanceType
	}
	key := spec.IdempotencyKey()
	if existing, err := p.findByKey(ctx, key); err != nil {
		return nil, err
	} else if existing != nil {
		return p.instanceOf(*existing), nil
	}

	var attach []group
	clusters, err := p.clusterGroups(ctx)
	if err != nil {
		return nil, err
	}
	if spec.Cluster != "" {
		g, ok := clusters[spec.Cluster]
		if !ok {
			return nil, fmt.Errorf("aws: cluster %q: %w", spec.Cluster, compute.ErrNotFound)
		}
		attach = append(attach, g)
	}
	// Validate the rules before creating anything: a placeholder target is
	// enough (IDs are recomputed once the instance ID exists).
	pending, err := policy.NewRules(compute.InstanceTarget("pending"), spec.Rules)
	if err != nil {
		return nil, err
	}
	for _, r := range pending {
		for _, c := range r.SourceClusters {
			if _, ok := clusters[c]; !ok {
				return nil, fmt.Errorf("aws: rule source cluster %q: %w", c, compute.ErrNotFound)
			}
		}
	}
	if _, err := policy.Compact(specsOf(pending), ruleLimit); err != nil {
		return nil, err
	}
	bdm, err := p.blockDevices(ctx, image)
	if err != nil {
		return nil, err
	}

	tags := map[string]string{
		tagOwner:   p.cfg.Owner,
		tagKind:    kindInstance,
		tagName:    spec.Name,
		tagRefID:   key,
		tagCreated: time.Now().UTC().Format(time.RFC3339),
	}
	if spec.Cluster != "" {
		tags[tagCluster] = spec.Cluster
	}
	sg, created, err := p.createGroup(ctx, instanceGroupName(p.cfg.Owner, key), "compute instance "+spec.Name, tags)
	if err != nil {
		return nil, err
	}
	// From here on, a failure removes the group again: a create that fails
	// leaves nothing behind. A group a concurrent create of the same key
	// made is that create's to clean up.
	fail := func(err error) (*compute.Instance, error) {
		if !created {
			return nil, err
		}
		if derr := p.deleteGroup(context.WithoutCancel(ctx), sg.ID); derr != nil {
			p.log.Warn("cleanup after a failed create", "group", sg.ID, "err", derr)
		}
		return nil, err
	}
	if err := p.ensureEgress(ctx, sg.ID); err != nil {
		return fail(err)
	}
	if err := p.apply(ctx, targetGroup{target: compute.InstanceTarget("pending"), group: sg}, pending, false); err != nil {
		return fail(err)
	}
	attach = append([]group{sg}, attach...)

	itags := map[string]string{}
	for k, v := range tags {
		if k != tagKind {
			itags[k] = v
		}
	}
	for k, v := range spec.Labels {
		itags[tagLabelPrefix+k] = v
	}
	vtags := map[string]string{tagOwner: p.cfg.Owner, tagName: spec.Name, tagRefID: key}
	in := &ec2.RunInstancesInput{
		ImageId:             awssdk.String(image),
		InstanceType:        types.InstanceType(itype),
		MinCount:            awssdk.Int32(1),
		MaxCount:            awssdk.Int32(1),
		ClientToken:         awssdk.String(clientToken(p.cfg.Owner, key)),
		UserData:            awssdk.String(userData(spec.Name, spec.SSHKeys)),
		BlockDeviceMappings: bdm,
		MetadataOptions: &types.InstanceMetadataOptionsRequest{
			HttpTokens:              types.HttpTokensStateRequired,
			HttpEndpoint:            types.InstanceMetadataEndpointStateEnabled,
			HttpPutResponseHopLimit: awssdk.Int32(1),
		},
		TagSpecifications: []types.TagSpecification{
			tagSpec(types.ResourceTypeInstance, itags),
			tagSpec(types.ResourceTypeVolume, vtags),
		},
	}
	for _, g := range attach {
		in.SecurityGroupIds = append(in.SecurityGroupIds, g.ID)
	}
	if p.cfg.SubnetID != "" {
		in.SubnetId = awssdk.String(p.cfg.SubnetID)
	}
	if err := checkRun(in, attach); err != nil {
		return fail(err)
	}
	out, err := p.ec2.RunInstances(ctx, in)
	if err != nil {
		return fail(mapErr("run instance", err))
	}
	if len(out.Instances) != 1 {
		return fail(fmt.Errorf("aws: RunInstances returned %d instances, want 1", len(out.Instances)))
	}
	raw := out.Instances[0]
	id := awssdk.ToString(raw.InstanceId)

	// The rule IDs depend on the instance ID: store their definitions now.
	if _, err := p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{sg.ID},
		Tags:      tagList(map[string]string{tagInstanceID: id}),
	}); err != nil {
		return nil, p.abandon(ctx, id, mapErr("tag security group", err))
	}
	sg.Tags[tagInstanceID] = id
	rules, err := policy.NewRules(compute.InstanceTarget(id), spec.Rules)
	if err == nil {
		err = p.apply(ctx, targetGroup{target: compute.InstanceTarget(id), group: sg}, rules, true)
	}
	if err != nil {
		return nil, p.abandon(ctx, id, err)
	}
	if raw.Tags == nil {
		raw.Tags = tagList(itags)
	}
	return p.instanceOf(raw), nil
}

// abandon terminates an instance whose create failed half-way.
func (p *Provider) abandon(ctx context.Context, id string, cause error) error {
	if err := p.TerminateInstance(context.WithoutCancel(ctx), id); err != nil && !errors.Is(err, compute.ErrNotFound) {
		p.log.Warn("cleanup after a failed create", "instance", id, "err", err)
	}
	return cause
}

func specsOf(rs []compute.FirewallRule) []compute.RuleSpec {
	out := make([]compute.RuleSpec, len(rs))
	for i, r := range rs {
		out[i] = r.RuleSpec
	}
	return out
}

// blockDevices returns mappings that make every EBS volume of the image
// encrypted (with the configured KMS key, or the account's default) and
// suppress instance-store mappings, whose encryption compute cannot
// promise on every instance type.
func (p *Provider) blockDevices(ctx context.Context, image string) ([]types.BlockDeviceMapping, error) {
	out, err := p.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{image}})
	if err != nil {
		return nil, mapErr("describe image "+image, err)
	}
	if len(out.Images) == 0 {
		return nil, fmt.Errorf("aws: image %q: %w", image, compute.ErrNotFound)
	}
	img := out.Images[0]
	if img.RootDeviceType != types.DeviceTypeEbs {
		return nil, fmt.Errorf("aws: image %q has a %q root device; only EBS roots can be encrypted: %w", image, img.RootDeviceType, compute.ErrUnsupported)
	}
	root := awssdk.ToString(img.RootDeviceName)
	var bdm []types.BlockDeviceMapping
	sawRoot := false
	for _, m := range img.BlockDeviceMappings {
		name := awssdk.ToString(m.DeviceName)
		switch {
		case m.Ebs != nil:
			bdm = append(bdm, types.BlockDeviceMapping{DeviceName: awssdk.String(name), Ebs: p.encryptedEBS()})
			sawRoot = sawRoot || name == root
		case m.NoDevice == nil:
			bdm = append(bdm, types.BlockDeviceMapping{DeviceName: awssdk.String(name), NoDevice: awssdk.String("")})
		}
	}
	if !sawRoot {
		bdm = append([]types.BlockDeviceMapping{{DeviceName: awssdk.String(root), Ebs: p.encryptedEBS()}}, bdm...)
	}
	return bdm, nil
}

func (p *Provider) encryptedEBS() *types.EbsBlockDevice {
	e := &types.EbsBlockDevice{Encrypted: awssdk.Bool(true), DeleteOnTermination: awssdk.Bool(true)}
	if p.cfg.KMSKeyID != "" {
		e.KmsKeyId = awssdk.String(p.cfg.KMSKeyID)
	}
	return e
}

// checkRun is the last check before RunInstances: whatever built the
// request, it must not launch an instance that breaks the security model.
func checkRun(in *ec2.RunInstancesInput, attach []group) error {
	if len(in.BlockDeviceMappings) == 0 {
		return compute.InvalidField("blockDeviceMappings", "", "no mapping for the root volume; it would be created unencrypted")
	}
	for i, m := range in.BlockDeviceMappings {
		field := fmt.Sprintf("blockDeviceMappings[%d]", i)
		switch {
		case m.Ebs != nil:
			if !awssdk.ToBool(m.Ebs.Encrypted) {
				return fmt.Errorf("%w (%w)", compute.InvalidField(field+".ebs.encrypted", awssdk.ToString(m.DeviceName), "every EBS volume must be encrypted"), compute.ErrUnsupported)
			}
		case m.NoDevice != nil:
		default:
			return compute.InvalidField(field, awssdk.ToString(m.DeviceName), "instance-store volumes are not supported")
		}
	}
	if len(in.NetworkInterfaces) > 0 {
		return compute.InvalidField("networkInterfaces", "", "security groups are set on the instance, not on interfaces")
	}
	mo := in.MetadataOptions
	if mo == nil || mo.HttpTokens != types.HttpTokensStateRequired || mo.HttpPutResponseHopLimit == nil || *mo.HttpPutResponseHopLimit > 2 {
		return compute.InvalidField("metadataOptions", "", "IMDSv2 (HttpTokens=required, hop limit <= 2) is required")
	}
	if len(in.SecurityGroupIds) == 0 || len(in.SecurityGroups) > 0 {
		// With no group, EC2 attaches the VPC's default group.
		return compute.InvalidField("securityGroupIds", "", "the instance's own group must be given by ID")
	}
	known := map[string]group{}
	for _, g := range attach {
		known[g.ID] = g
	}
	for _, id := range in.SecurityGroupIds {
		g, ok := known[id]
		if !ok {
			return compute.InvalidField("securityGroupIds", id, "not a compute-owned group")
		}
		if g.Name == "default" {
			return fmt.Errorf("aws: refusing to attach the VPC's default security group %s: it lets every member of it in: %w", id, compute.ErrPrecondition)
		}
		switch g.Tags[tagKind] {
		case kindCluster, kindInstance:
		default:
			return compute.InvalidField("securityGroupIds", id, "not a compute cluster or instance group")
		}
	}
	return nil
}
