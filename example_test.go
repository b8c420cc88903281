package compute_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"golang.org/x/crypto/ssh"
)

// exampleProvider is a tiny in-memory provider: its instances become
// running on the second look. Real providers live in provider/<name>.
type exampleProvider struct {
	mu        sync.Mutex
	instances map[string]*compute.Instance
	looks     map[string]int
}

func init() {
	compute.Register("example", func(ctx context.Context, config any) (compute.Provider, error) {
		return &exampleProvider{instances: map[string]*compute.Instance{}, looks: map[string]int{}}, nil
	})
}

func (p *exampleProvider) Name() string { return "example" }

func (p *exampleProvider) CreateInstance(ctx context.Context, spec compute.InstanceSpec) (*compute.Instance, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	id := "i-" + spec.IdempotencyKey()
	if inst, ok := p.instances[id]; ok {
		return inst, nil // same key, same instance
	}
	inst := &compute.Instance{ID: id, Name: spec.Name, Provider: "example", Status: compute.StatusPending}
	p.instances[id] = inst
	c := *inst
	return &c, nil
}

func (p *exampleProvider) GetInstance(ctx context.Context, id string) (*compute.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	inst, ok := p.instances[id]
	if !ok {
		return nil, fmt.Errorf("instance %s: %w", id, compute.ErrNotFound)
	}
	if p.looks[id]++; p.looks[id] >= 2 {
		inst.Status = compute.StatusRunning
	}
	c := *inst
	return &c, nil
}

func (p *exampleProvider) ListInstances(ctx context.Context, o compute.ListOptions) ([]*compute.Instance, error) {
	return nil, compute.ErrUnsupported
}
func (p *exampleProvider) TerminateInstance(ctx context.Context, id string) error {
	return compute.ErrUnsupported
}
func (p *exampleProvider) CreateCluster(ctx context.Context, s compute.ClusterSpec) (*compute.Cluster, error) {
	return nil, compute.ErrUnsupported
}
func (p *exampleProvider) GetCluster(ctx context.Context, name string) (*compute.Cluster, error) {
	return nil, compute.ErrUnsupported
}
func (p *exampleProvider) ListClusters(ctx context.Context) ([]*compute.Cluster, error) {
	return nil, compute.ErrUnsupported
}
func (p *exampleProvider) DeleteCluster(ctx context.Context, name string) error {
	return compute.ErrUnsupported
}
func (p *exampleProvider) Close() error { return nil }

// exampleKey is a fixed ed25519 public key in authorized_keys form.
func exampleKey() string {
	pub := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public()
	sp, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " me@laptop"
}

func ExampleOpen() {
	ctx := context.Background()
	p, err := compute.Open(ctx, "example", nil)
	if err != nil {
		panic(err)
	}
	defer p.Close()

	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: "web", SSHKeys: []string{exampleKey()}})
	if err != nil {
		panic(err)
	}
	fmt.Println(inst.Name, inst.Status)

	// Invalid input is a typed error naming the field.
	_, err = p.CreateInstance(ctx, compute.InstanceSpec{Name: "web", SSHKeys: nil})
	fmt.Println(errors.Is(err, compute.ErrInvalidArgument), err)

	// A provider nobody imported is not found.
	_, err = compute.Open(ctx, "no-such-provider", nil)
	fmt.Println(errors.Is(err, compute.ErrNotFound))
	// Output:
	// web pending
	// true invalid argument: sshKeys: at least one SSH public key is required
	// true
}

func ExampleWait() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, _ := compute.Open(ctx, "example", nil)
	inst, _ := p.CreateInstance(ctx, compute.InstanceSpec{Name: "db", SSHKeys: []string{exampleKey()}})

	inst, err := compute.Wait(ctx, p, inst.ID, compute.StatusRunning)
	if err != nil {
		panic(err)
	}
	fmt.Println(inst.Name, inst.Status)
	// Output:
	// db running
}

func ExampleSSHInfo_HostKeyCallback() {
	// The host key the provider reported for the instance. (Fixed here so
	// the output is stable; providers generate a fresh one per instance.)
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = 1
	hostKey, _ := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	info := compute.SSHInfo{User: "root", Host: "10.199.0.2", Port: 22, HostKeys: []compute.HostKey{compute.HostKeyOf(hostKey)}}
	fmt.Println(info.HostKeys[0].Fingerprint)

	cb, err := info.HostKeyCallback()
	if err != nil {
		panic(err)
	}
	// Pass it to ssh.Dial: no trust on first use, no prompt.
	_ = &ssh.ClientConfig{User: info.User, HostKeyCallback: cb, HostKeyAlgorithms: info.HostKeyAlgorithms()}

	fmt.Println(cb(info.Addr(), nil, hostKey) == nil)
	seed[0] = 2
	impostor, _ := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	fmt.Println(cb(info.Addr(), nil, impostor))
	// Output:
	// SHA256:+7Mp32er4lydoNiApNjjbYQK0PA6q+yZEYhxADwBN3M
	// true
	// host key ssh-ed25519 SHA256:4+jTG76cc6rfx4vJn1HObI6M6GeUcVmxEOgC8G0qwII of 10.199.0.2:22 is not one the provider reported
}
