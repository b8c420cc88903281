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

// TerminateInstance terminates the instance, waits until EC2 reports it
// terminated (its network interface is then on its way out), and deletes
// its security group, retrying while EC2 still sees the interface.
func (p *Provider) TerminateInstance(ctx context.Context, id string) error {
	raw, err := p.getRaw(ctx, id)
	if err != nil {
		return err
	}
	tags := tagMap(raw.Tags)
	gone := statusOf(raw.State) == compute.StatusTerminated
	if !gone {
		if _, err := p.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
			return mapErr("terminate "+id, err)
		}
		if err := p.waitState(ctx, id, compute.StatusTerminated); err != nil {
			return err
		}
	}
	p.mu.Lock()
	delete(p.hostKeys, id)
	p.mu.Unlock()
	g, err := p.instanceGroup(ctx, tags[tagRefID])
	switch {
	case errors.Is(err, compute.ErrNotFound):
	case err != nil:
		return err
	default:
		if err := p.deleteGroup(ctx, g.ID); err != nil {
			return err
		}
	}
	if gone {
		return fmt.Errorf("aws: instance %q is already terminated: %w", id, compute.ErrNotFound)
	}
	return nil
}

// waitState polls until the instance reaches want. Reaching terminated
// while waiting for anything else is an error.
func (p *Provider) waitState(ctx context.Context, id string, want compute.Status) error {
	for {
		raw, err := p.getRaw(ctx, id)
		if err != nil {
			return err
		}
		s := statusOf(raw.State)
		if s == want {
			return nil
		}
		if s == compute.StatusTerminated {
			return fmt.Errorf("aws: instance %q terminated while waiting for %s: %w", id, want, compute.ErrConflict)
		}
		if err := sleep(ctx, p.cfg.PollInterval); err != nil {
			return fmt.Errorf("aws: waiting for %s to be %s: %w", id, want, err)
		}
	}
}

// StopInstance stops the instance, keeping its volumes.
func (p *Provider) StopInstance(ctx context.Context, id string) error {
	if _, err := p.getRaw(ctx, id); err != nil {
		return err
	}
	_, err := p.ec2.StopInstances(ctx, &ec2.StopInstancesInput{InstanceIds: []string{id}})
	return mapErr("stop "+id, err)
}

// StartInstance starts a stopped instance.
func (p *Provider) StartInstance(ctx context.Context, id string) error {
	if _, err := p.getRaw(ctx, id); err != nil {
		return err
	}
	_, err := p.ec2.StartInstances(ctx, &ec2.StartInstancesInput{InstanceIds: []string{id}})
	return mapErr("start "+id, err)
}

// RebootInstance reboots the instance.
func (p *Provider) RebootInstance(ctx context.Context, id string) error {
	if _, err := p.getRaw(ctx, id); err != nil {
		return err
	}
	_, err := p.ec2.RebootInstances(ctx, &ec2.RebootInstancesInput{InstanceIds: []string{id}})
	return mapErr("reboot "+id, err)
}

// GC deletes owned instance security groups whose instance is gone (left
// by a create or terminate that was interrupted). Groups younger than
// Config.GCGrace are left alone, so GC never races a create in progress.
// Clusters are their security group, so they have nothing to leak.
func (p *Provider) GC(ctx context.Context) (compute.GCReport, error) {
	var rep compute.GCReport
	gs, err := p.describeGroups(ctx, false, filter("tag:"+tagKind, kindInstance))
	if err != nil {
		return rep, err
	}
	live, err := p.describeInstances(ctx, nil, liveFilter())
	if err != nil {
		return rep, err
	}
	keys := map[string]bool{}
	for _, in := range live {
		keys[tagMap(in.Tags)[tagRefID]] = true
	}
	var errs []error
	for _, g := range gs {
		if keys[g.Tags[tagRefID]] {
			continue
		}
		if created, err := time.Parse(time.RFC3339, g.Tags[tagCreated]); err == nil && time.Since(created) < p.cfg.GCGrace {
			continue
		}
		if err := p.deleteGroup(ctx, g.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Removed = append(rep.Removed, "security-group "+g.ID+" ("+g.Name+")")
	}
	return rep, errors.Join(errs...)
}

// Inventory lists every object this provider owns: security groups and
// instances that are not terminated.
func (p *Provider) Inventory(ctx context.Context) ([]string, error) {
	gs, err := p.describeGroups(ctx, false)
	if err != nil {
		return nil, err
	}
	live, err := p.describeInstances(ctx, nil, liveFilter())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, g := range gs {
		out = append(out, fmt.Sprintf("security-group %s (%s)", g.ID, g.Name))
	}
	for _, in := range live {
		out = append(out, fmt.Sprintf("instance %s (%s, %s)", awssdk.ToString(in.InstanceId), tagMap(in.Tags)[tagName], stateName(in.State)))
	}
	sort.Strings(out)
	return out, nil
}

func stateName(s *types.InstanceState) string {
	if s == nil {
		return "unknown"
	}
	return string(s.Name)
}
