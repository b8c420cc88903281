package compute

import (
	"net/netip"
	"time"
)

// Status is the lifecycle state of an instance.
type Status string

const (
	StatusPending     Status = "pending"
	StatusRunning     Status = "running"
	StatusStopping    Status = "stopping"
	StatusStopped     Status = "stopped"
	StatusTerminating Status = "terminating"
	StatusTerminated  Status = "terminated"
	StatusFailed      Status = "failed"
)

// Terminal reports whether no further transition will happen without a
// request (stopped and running are not terminal: they wait for requests,
// but they are stable).
func (s Status) Terminal() bool { return s == StatusTerminated || s == StatusFailed }

// InstanceSpec describes an instance to create.
type InstanceSpec struct {
	// Name is a human name, unique per provider where the provider can
	// enforce it: 1-63 characters of [a-z0-9-], starting with a letter,
	// not ending with '-'.
	Name string
	// RefID is an idempotency key chosen by the caller. Creating twice with
	// the same RefID returns the same instance, never two. Optional; when
	// empty, the Name is the idempotency key.
	RefID string
	// Cluster, when set, names an existing cluster the instance joins. Its
	// members reach each other on every port and protocol.
	Cluster string
	// Image selects the operating system image; empty means the provider's
	// default.
	Image string
	// Type selects the instance size from the provider's catalogue; empty
	// means the provider's default.
	Type string
	// SSHKeys are public keys in authorized_keys format. At least one is
	// required. Accepted: ssh-ed25519, ecdsa-sha2-nistp{256,384,521}, and
	// ssh-rsa of at least 3072 bits.
	SSHKeys []string
	// Rules are ingress rules created with the instance, targeting it. An
	// instance with no rules accepts no inbound connection at all, port 22
	// included.
	Rules []RuleSpec
	// Labels are free-form key/value tags.
	Labels map[string]string
}

// HostKey is one of an instance's SSH host public keys.
type HostKey struct {
	// Type is the key algorithm, e.g. "ssh-ed25519".
	Type string `json:"type"`
	// PublicKey is the key in authorized_keys format ("ssh-ed25519 AAAA...").
	PublicKey string `json:"publicKey"`
	// Fingerprint is the SHA256 fingerprint ("SHA256:...") as printed by
	// ssh-keygen -l.
	Fingerprint string `json:"fingerprint"`
}

// SSHInfo says how to reach an instance over SSH and how to verify it.
// Clients must check the server's host key against HostKeys instead of
// trusting it on first use.
type SSHInfo struct {
	User     string    `json:"user"`
	Host     string    `json:"host"`
	Port     int       `json:"port"`
	HostKeys []HostKey `json:"hostKeys"`
}

// Instance is a compute instance as the provider reports it.
type Instance struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	RefID     string            `json:"refId,omitempty"`
	Provider  string            `json:"provider"`
	Cluster   string            `json:"cluster,omitempty"`
	Image     string            `json:"image,omitempty"`
	Type      string            `json:"type,omitempty"`
	Status    Status            `json:"status"`
	Addresses []netip.Addr      `json:"addresses,omitempty"`
	SSH       SSHInfo           `json:"ssh"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	// StatusReason explains a failed or unexpected status, when known.
	StatusReason string `json:"statusReason,omitempty"`
}

// ClusterSpec describes a cluster to create.
type ClusterSpec struct {
	// Name follows the same rules as InstanceSpec.Name and is unique per
	// provider.
	Name   string
	Labels map[string]string
}

// Cluster is a group of instances that reach each other on every port and
// protocol and are isolated from every other cluster.
type Cluster struct {
	Name      string            `json:"name"`
	ID        string            `json:"id"`
	Provider  string            `json:"provider"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	// Subnets are the address ranges of the cluster's members, when the
	// provider assigns one per cluster.
	Subnets []netip.Prefix `json:"subnets,omitempty"`
}

// InstanceType is one entry of a provider's size catalogue.
type InstanceType struct {
	Name      string `json:"name"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memoryMiB"`
	// MaxPIDs is the process limit, where the provider enforces one.
	MaxPIDs int  `json:"maxPids,omitempty"`
	Default bool `json:"default,omitempty"`
}

// ListOptions filters List calls. The zero value lists everything.
type ListOptions struct {
	// Cluster, when set, keeps only members of that cluster.
	Cluster string
	// Labels keeps only instances carrying every given label.
	Labels map[string]string
}

// Matches reports whether inst passes the filter.
func (o ListOptions) Matches(inst *Instance) bool {
	if o.Cluster != "" && inst.Cluster != o.Cluster {
		return false
	}
	for k, v := range o.Labels {
		if got, ok := inst.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
