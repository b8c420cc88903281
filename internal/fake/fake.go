// Package fake is an in-memory compute.Provider for unit tests of code built
// on the SDK (the CLI). It implements every optional interface except
// ProbeHoster (it has no network to attach a vantage point to), enforces the
// same input and state rules as a real provider, and records every call so a
// test can prove that bad input changed nothing. It enforces no network
// policy, so it must never stand in for a real provider in the conformance
// suite.
package fake

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/policy"
	"golang.org/x/crypto/ssh"
)

// Provider is the fake. The zero value is not usable; call New.
type Provider struct {
	name string

	mu        sync.Mutex
	instances map[string]*compute.Instance // by ID
	byKey     map[string]string            // idempotency key -> ID
	clusters  map[string]*compute.Cluster
	rules     map[string]compute.FirewallRule // by rule ID
	nextAddr  netip.Addr
	nextID    int
	calls     []string
	pending   map[string]int // ID -> polls left before running

	// Caller is what CallerPrefixes returns; empty makes it fail with
	// ErrUnsupported, as a provider that cannot tell would.
	Caller []netip.Prefix
	// PendingPolls is how many GetInstance calls a new or started instance
	// reports StatusPending before StatusRunning.
	PendingPolls int
	// Leftovers are the names GC reports as removed (then forgets).
	Leftovers []string
	// Now is the clock.
	Now func() time.Time
}

// Interfaces the fake implements; the CLI discovers them by type assertion.
var (
	_ compute.Provider           = (*Provider)(nil)
	_ compute.StopStarter        = (*Provider)(nil)
	_ compute.Rebooter           = (*Provider)(nil)
	_ compute.FirewallManager    = (*Provider)(nil)
	_ compute.GarbageCollector   = (*Provider)(nil)
	_ compute.InstanceTypeLister = (*Provider)(nil)
	_ compute.FeatureReporter    = (*Provider)(nil)
	_ compute.CallerPrefixer     = (*Provider)(nil)
	_ compute.Inventorier        = (*Provider)(nil)
)

// New returns an empty fake that reports name as its provider name.
func New(name string) *Provider {
	return &Provider{
		name:      name,
		instances: map[string]*compute.Instance{},
		byKey:     map[string]string{},
		clusters:  map[string]*compute.Cluster{},
		rules:     map[string]compute.FirewallRule{},
		pending:   map[string]int{},
		nextAddr:  netip.MustParseAddr("10.229.0.10"),
		Now:       time.Now,
	}
}

// Minimal returns p with only the required compute.Provider methods visible,
// like a provider that implements no optional interface.
func Minimal(p *Provider) compute.Provider { return minimal{p} }

type minimal struct{ p *Provider }

func (m minimal) Name() string { return m.p.Name() }
func (m minimal) CreateInstance(ctx context.Context, s compute.InstanceSpec) (*compute.Instance, error) {
	return m.p.CreateInstance(ctx, s)
}
func (m minimal) GetInstance(ctx context.Context, id string) (*compute.Instance, error) {
	return m.p.GetInstance(ctx, id)
}
func (m minimal) ListInstances(ctx context.Context, o compute.ListOptions) ([]*compute.Instance, error) {
	return m.p.ListInstances(ctx, o)
}
func (m minimal) TerminateInstance(ctx context.Context, id string) error {
	return m.p.TerminateInstance(ctx, id)
}
func (m minimal) CreateCluster(ctx context.Context, s compute.ClusterSpec) (*compute.Cluster, error) {
	return m.p.CreateCluster(ctx, s)
}
func (m minimal) GetCluster(ctx context.Context, n string) (*compute.Cluster, error) {
	return m.p.GetCluster(ctx, n)
}
func (m minimal) ListClusters(ctx context.Context) ([]*compute.Cluster, error) {
	return m.p.ListClusters(ctx)
}
func (m minimal) DeleteCluster(ctx context.Context, n string) error { return m.p.DeleteCluster(ctx, n) }
func (m minimal) Close() error                                      { return m.p.Close() }

// mutating lists the methods that may change state.
var mutating = map[string]bool{
	"CreateInstance": true, "TerminateInstance": true, "CreateCluster": true, "DeleteCluster": true,
	"StopInstance": true, "StartInstance": true, "RebootInstance": true,
	"AddRule": true, "RevokeRule": true, "SetRules": true, "GC": true,
}

// Calls returns the names of the methods called so far, in order.
func (p *Provider) Calls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// Mutations returns the calls to methods that may change state, whether
// they succeeded or not.
func (p *Provider) Mutations() []string {
	var out []string
	for _, c := range p.Calls() {
		if mutating[c] {
			out = append(out, c)
		}
	}
	return out
}

// Rules returns every stored rule, sorted by ID.
func (p *Provider) Rules() []compute.FirewallRule {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sortedRules(func(compute.FirewallRule) bool { return true })
}

// record notes a call; the caller holds p.mu.
func (p *Provider) record(name string) { p.calls = append(p.calls, name) }

func (p *Provider) Name() string { return p.name }
func (p *Provider) Close() error { return nil }

func (p *Provider) CreateInstance(ctx context.Context, spec compute.InstanceSpec) (*compute.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("CreateInstance")
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := policy.ValidateInstanceSpec(spec); err != nil {
		return nil, err
	}
	if id, ok := p.byKey[spec.IdempotencyKey()]; ok {
		return clone(p.instances[id]), nil
	}
	for _, inst := range p.instances {
		if inst.Name == spec.Name {
			return nil, fmt.Errorf("instance name %q is in use by %s: %w", spec.Name, inst.ID, compute.ErrConflict)
		}
	}
	if spec.Cluster != "" {
		if _, ok := p.clusters[spec.Cluster]; !ok {
			return nil, fmt.Errorf("cluster %q: %w", spec.Cluster, compute.ErrNotFound)
		}
	}
	if err := p.checkSourceClusters(spec.Rules); err != nil {
		return nil, err
	}
	if spec.Type != "" && !slices.ContainsFunc(catalogue, func(t compute.InstanceType) bool { return t.Name == spec.Type }) {
		return nil, compute.InvalidField("type", spec.Type, "unknown instance type")
	}
	p.nextID++
	id := fmt.Sprintf("i-%08x", p.nextID)
	target := compute.InstanceTarget(id)
	rules, err := policy.NewRules(target, spec.Rules)
	if err != nil {
		return nil, err
	}
	hostPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(hostPub)
	if err != nil {
		return nil, err
	}
	addr := p.nextAddr
	p.nextAddr = addr.Next()
	typ := spec.Type
	if typ == "" {
		typ = catalogue[0].Name
	}
	inst := &compute.Instance{
		ID:        id,
		Name:      spec.Name,
		RefID:     spec.RefID,
		Provider:  p.name,
		Cluster:   spec.Cluster,
		Image:     spec.Image,
		Type:      typ,
		Status:    compute.StatusRunning,
		Addresses: []netip.Addr{addr},
		SSH: compute.SSHInfo{
			User:     "root",
			Host:     addr.String(),
			Port:     22,
			HostKeys: []compute.HostKey{compute.HostKeyOf(sshPub)},
		},
		Labels:    clone(&spec).Labels,
		CreatedAt: p.Now().UTC(),
	}
	if p.PendingPolls > 0 {
		inst.Status = compute.StatusPending
		p.pending[id] = p.PendingPolls
	}
	p.instances[id] = inst
	p.byKey[spec.IdempotencyKey()] = id
	for _, r := range rules {
		p.rules[r.ID] = r
	}
	return clone(inst), nil
}

func (p *Provider) GetInstance(ctx context.Context, id string) (*compute.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("GetInstance")
	inst, ok := p.instances[id]
	if !ok {
		return nil, fmt.Errorf("instance %q: %w", id, compute.ErrNotFound)
	}
	if n, ok := p.pending[id]; ok {
		if n <= 1 {
			delete(p.pending, id)
			inst.Status = compute.StatusRunning
		} else {
			p.pending[id] = n - 1
		}
	}
	return clone(inst), nil
}

func (p *Provider) ListInstances(ctx context.Context, opts compute.ListOptions) ([]*compute.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("ListInstances")
	out := []*compute.Instance{}
	for _, inst := range p.instances {
		if opts.Matches(inst) {
			out = append(out, clone(inst))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func (p *Provider) TerminateInstance(ctx context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("TerminateInstance")
	inst, ok := p.instances[id]
	if !ok {
		return fmt.Errorf("instance %q: %w", id, compute.ErrNotFound)
	}
	delete(p.instances, id)
	delete(p.pending, id)
	for k, v := range p.byKey {
		if v == id {
			delete(p.byKey, k)
		}
	}
	for rid, r := range p.rules {
		if r.Target == compute.InstanceTarget(inst.ID) {
			delete(p.rules, rid)
		}
	}
	return nil
}

func (p *Provider) CreateCluster(ctx context.Context, spec compute.ClusterSpec) (*compute.Cluster, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("CreateCluster")
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if _, ok := p.clusters[spec.Name]; ok {
		return nil, fmt.Errorf("cluster %q exists: %w", spec.Name, compute.ErrConflict)
	}
	n := len(p.clusters) + 1
	c := &compute.Cluster{
		Name:      spec.Name,
		ID:        fmt.Sprintf("c-%08x", n),
		Provider:  p.name,
		Labels:    spec.Labels,
		CreatedAt: p.Now().UTC(),
		Subnets:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 229, byte(n), 0}), 24)},
	}
	p.clusters[spec.Name] = c
	cc := *c
	return &cc, nil
}

func (p *Provider) GetCluster(ctx context.Context, name string) (*compute.Cluster, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("GetCluster")
	c, ok := p.clusters[name]
	if !ok {
		return nil, fmt.Errorf("cluster %q: %w", name, compute.ErrNotFound)
	}
	cc := *c
	return &cc, nil
}

func (p *Provider) ListClusters(ctx context.Context) ([]*compute.Cluster, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("ListClusters")
	out := []*compute.Cluster{}
	for _, c := range p.clusters {
		cc := *c
		out = append(out, &cc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (p *Provider) DeleteCluster(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("DeleteCluster")
	if _, ok := p.clusters[name]; !ok {
		return fmt.Errorf("cluster %q: %w", name, compute.ErrNotFound)
	}
	for _, inst := range p.instances {
		if inst.Cluster == name {
			return fmt.Errorf("cluster %q has member %s: %w", name, inst.ID, compute.ErrConflict)
		}
	}
	for _, r := range p.rules {
		if slices.Contains(r.SourceClusters, name) && r.Target != compute.ClusterTarget(name) {
			return fmt.Errorf("cluster %q is the source of rule %s: %w", name, r.ID, compute.ErrConflict)
		}
	}
	delete(p.clusters, name)
	for rid, r := range p.rules {
		if r.Target == compute.ClusterTarget(name) {
			delete(p.rules, rid)
		}
	}
	return nil
}

func (p *Provider) StopInstance(ctx context.Context, id string) error {
	return p.setStatus("StopInstance", id, compute.StatusStopped)
}

func (p *Provider) StartInstance(ctx context.Context, id string) error {
	return p.setStatus("StartInstance", id, compute.StatusRunning)
}

func (p *Provider) RebootInstance(ctx context.Context, id string) error {
	return p.setStatus("RebootInstance", id, compute.StatusRunning)
}

func (p *Provider) setStatus(call, id string, s compute.Status) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record(call)
	inst, ok := p.instances[id]
	if !ok {
		return fmt.Errorf("instance %q: %w", id, compute.ErrNotFound)
	}
	if call == "RebootInstance" && inst.Status != compute.StatusRunning {
		return fmt.Errorf("instance %s is %s: %w", id, inst.Status, compute.ErrConflict)
	}
	inst.Status = s
	return nil
}

// checkTarget returns ErrNotFound when t names nothing; the caller holds p.mu.
func (p *Provider) checkTarget(t compute.Target) error {
	if err := t.Validate(); err != nil {
		return err
	}
	switch t.Kind {
	case compute.TargetInstance:
		if _, ok := p.instances[t.Name]; !ok {
			return fmt.Errorf("instance %q: %w", t.Name, compute.ErrNotFound)
		}
	case compute.TargetCluster:
		if _, ok := p.clusters[t.Name]; !ok {
			return fmt.Errorf("cluster %q: %w", t.Name, compute.ErrNotFound)
		}
	}
	return nil
}

func (p *Provider) checkSourceClusters(rules []compute.RuleSpec) error {
	for _, r := range rules {
		for _, c := range r.SourceClusters {
			if _, ok := p.clusters[c]; !ok {
				return fmt.Errorf("source cluster %q: %w", c, compute.ErrNotFound)
			}
		}
	}
	return nil
}

func (p *Provider) sortedRules(keep func(compute.FirewallRule) bool) []compute.FirewallRule {
	out := []compute.FirewallRule{}
	for _, r := range p.rules {
		if keep(r) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (p *Provider) ListRules(ctx context.Context, target compute.Target) ([]compute.FirewallRule, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("ListRules")
	if err := p.checkTarget(target); err != nil {
		return nil, err
	}
	return p.sortedRules(func(r compute.FirewallRule) bool { return r.Target == target }), nil
}

func (p *Provider) AddRule(ctx context.Context, target compute.Target, spec compute.RuleSpec) (*compute.FirewallRule, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("AddRule")
	r, err := policy.NewRule(target, spec)
	if err != nil {
		return nil, err
	}
	if err := p.checkTarget(target); err != nil {
		return nil, err
	}
	if err := p.checkSourceClusters([]compute.RuleSpec{spec}); err != nil {
		return nil, err
	}
	if old, ok := p.rules[r.ID]; ok {
		return &old, nil
	}
	p.rules[r.ID] = r
	return &r, nil
}

func (p *Provider) RevokeRule(ctx context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("RevokeRule")
	if _, ok := p.rules[id]; !ok {
		return fmt.Errorf("rule %q: %w", id, compute.ErrNotFound)
	}
	delete(p.rules, id)
	return nil
}

func (p *Provider) SetRules(ctx context.Context, target compute.Target, specs []compute.RuleSpec) ([]compute.FirewallRule, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("SetRules")
	desired, err := policy.NewRules(target, specs)
	if err != nil {
		return nil, err
	}
	if err := p.checkTarget(target); err != nil {
		return nil, err
	}
	if err := p.checkSourceClusters(specs); err != nil {
		return nil, err
	}
	current := p.sortedRules(func(r compute.FirewallRule) bool { return r.Target == target })
	add, revoke := policy.Diff(current, desired)
	for _, r := range revoke {
		delete(p.rules, r.ID)
	}
	for _, r := range add {
		p.rules[r.ID] = r
	}
	return p.sortedRules(func(r compute.FirewallRule) bool { return r.Target == target }), nil
}

func (p *Provider) GC(ctx context.Context) (compute.GCReport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("GC")
	rep := compute.GCReport{Removed: slices.Clone(p.Leftovers)}
	if rep.Removed == nil {
		rep.Removed = []string{}
	}
	p.Leftovers = nil
	return rep, nil
}

var catalogue = []compute.InstanceType{
	{Name: "small", VCPUs: 1, MemoryMiB: 1024, MaxPIDs: 1024, Default: true},
	{Name: "medium", VCPUs: 2, MemoryMiB: 4096, MaxPIDs: 4096},
}

func (p *Provider) InstanceTypes(ctx context.Context) ([]compute.InstanceType, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("InstanceTypes")
	return slices.Clone(catalogue), nil
}

func (p *Provider) Features() compute.Features {
	return compute.Features{EncryptionAtRest: "none (in-memory fake)"}
}

func (p *Provider) CallerPrefixes(ctx context.Context) ([]netip.Prefix, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("CallerPrefixes")
	if len(p.Caller) == 0 {
		return nil, fmt.Errorf("fake: caller address unknown: %w", compute.ErrUnsupported)
	}
	return slices.Clone(p.Caller), nil
}

// clone deep-copies the mutable parts of an instance or spec.
func clone[T compute.Instance | compute.InstanceSpec](v *T) *T {
	c := *v
	switch x := any(&c).(type) {
	case *compute.Instance:
		x.Addresses = slices.Clone(x.Addresses)
		x.SSH.HostKeys = slices.Clone(x.SSH.HostKeys)
		x.Labels = cloneMap(x.Labels)
	case *compute.InstanceSpec:
		x.Labels = cloneMap(x.Labels)
	}
	return &c
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// String summarises the fake's state for test failure messages.
func (p *Provider) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "fake %s: %d instances, %d clusters, %d rules", p.name, len(p.instances), len(p.clusters), len(p.rules))
	return b.String()
}

// Inventory lists the fake's objects: one entry per instance, cluster and
// rule (it has no lower-level objects).
func (p *Provider) Inventory(ctx context.Context) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("Inventory")
	var out []string
	for id := range p.instances {
		out = append(out, "instance "+id)
	}
	for name := range p.clusters {
		out = append(out, "cluster "+name)
	}
	for id := range p.rules {
		out = append(out, "rule "+id)
	}
	sort.Strings(out)
	return out, nil
}
