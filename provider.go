package compute

import (
	"context"
	"time"
)

// Provider is the contract every provider implements. Optional features are
// separate interfaces discovered by type assertion (see CapabilitiesOf).
//
// Contracts common to every method:
//   - Invalid input returns an error wrapping ErrInvalidArgument and changes
//     nothing.
//   - A missing object returns an error wrapping ErrNotFound.
//   - A create that returns an error leaves nothing behind.
type Provider interface {
	// Name is the registered name of the provider ("local", "aws").
	Name() string

	// CreateInstance creates and starts an instance. It is idempotent by
	// spec.RefID (or Name when RefID is empty): a second call with the same
	// key, even concurrent, returns the same instance. It returns once the
	// instance exists; use Wait to wait for StatusRunning.
	CreateInstance(ctx context.Context, spec InstanceSpec) (*Instance, error)
	// GetInstance returns the instance with the given ID.
	GetInstance(ctx context.Context, id string) (*Instance, error)
	// ListInstances lists instances matching opts, sorted by name.
	ListInstances(ctx context.Context, opts ListOptions) ([]*Instance, error)
	// TerminateInstance destroys the instance and every object created for
	// it. Terminating an instance that is already gone returns ErrNotFound.
	TerminateInstance(ctx context.Context, id string) error

	// CreateCluster creates an empty cluster. Creating a cluster that
	// exists returns ErrConflict.
	CreateCluster(ctx context.Context, spec ClusterSpec) (*Cluster, error)
	GetCluster(ctx context.Context, name string) (*Cluster, error)
	ListClusters(ctx context.Context) ([]*Cluster, error)
	// DeleteCluster deletes an empty cluster and its rules. It returns
	// ErrConflict while the cluster has members.
	DeleteCluster(ctx context.Context, name string) error

	// Close releases the provider's resources (not its instances).
	Close() error
}

// StopStarter is implemented by providers that can stop an instance while
// keeping its disk, and start it again.
type StopStarter interface {
	StopInstance(ctx context.Context, id string) error
	StartInstance(ctx context.Context, id string) error
}

// Rebooter is implemented by providers that can reboot an instance.
type Rebooter interface {
	RebootInstance(ctx context.Context, id string) error
}

// FirewallManager is implemented by providers whose rules can change after
// creation. Changes apply to running instances immediately.
type FirewallManager interface {
	// ListRules lists the rules of target, sorted by ID.
	ListRules(ctx context.Context, target Target) ([]FirewallRule, error)
	// AddRule adds a rule to target. Adding a rule whose ID already exists
	// on target returns the existing rule and changes nothing.
	AddRule(ctx context.Context, target Target, rule RuleSpec) (*FirewallRule, error)
	// RevokeRule removes the rule with the given ID from whatever target
	// holds it.
	RevokeRule(ctx context.Context, id string) error
	// SetRules converges target's rules to exactly rules and returns them.
	// Calling it again with the same rules changes nothing.
	SetRules(ctx context.Context, target Target, rules []RuleSpec) ([]FirewallRule, error)
}

// GCReport lists what a garbage-collection sweep removed.
type GCReport struct {
	Removed []string `json:"removed"`
}

// GarbageCollector is implemented by providers that can find and remove
// objects they own whose instance or cluster record is gone (after a crash
// mid-create, for example).
type GarbageCollector interface {
	GC(ctx context.Context) (GCReport, error)
}

// InstanceTypeLister is implemented by providers with a size catalogue.
type InstanceTypeLister interface {
	InstanceTypes(ctx context.Context) ([]InstanceType, error)
}

// FeatureReporter is implemented by providers to report facts that their
// method set cannot show.
type FeatureReporter interface {
	Features() Features
}

// Features are capabilities a provider reports about itself.
type Features struct {
	// IPv6 is true when instances get IPv6 addresses and rules may use
	// IPv6 sources.
	IPv6 bool `json:"ipv6"`
	// EncryptionAtRest describes how instance data is encrypted at rest
	// ("" means it is not).
	EncryptionAtRest string `json:"encryptionAtRest,omitempty"`
	// RuleLimit is the maximum number of compiled rule entries per target
	// (0: no limit).
	RuleLimit int `json:"ruleLimit,omitempty"`
	// RuleChangeLatency is an upper bound on how long a rule change takes
	// to apply (0: applied before the call returns).
	RuleChangeLatency time.Duration `json:"ruleChangeLatency,omitempty"`
}

// FirewallMode says whether rules can change after creation.
type FirewallMode string

const (
	// FirewallMutable: rules can be added and revoked at any time.
	FirewallMutable FirewallMode = "mutable"
	// FirewallCreateOnly: rules are set at creation and cannot change.
	FirewallCreateOnly FirewallMode = "create-only"
)

// Capabilities summarises what a provider supports.
type Capabilities struct {
	Provider      string       `json:"provider"`
	StopStart     bool         `json:"stopStart"`
	Reboot        bool         `json:"reboot"`
	Firewall      FirewallMode `json:"firewall"`
	GC            bool         `json:"gc"`
	InstanceTypes bool         `json:"instanceTypes"`
	Features
}

// CapabilitiesOf reports what p supports, from its method set and, when it
// implements FeatureReporter, from what it says of itself.
func CapabilitiesOf(p Provider) Capabilities {
	c := Capabilities{Provider: p.Name(), Firewall: FirewallCreateOnly}
	_, c.StopStart = p.(StopStarter)
	_, c.Reboot = p.(Rebooter)
	if _, ok := p.(FirewallManager); ok {
		c.Firewall = FirewallMutable
	}
	_, c.GC = p.(GarbageCollector)
	_, c.InstanceTypes = p.(InstanceTypeLister)
	if fr, ok := p.(FeatureReporter); ok {
		c.Features = fr.Features()
	}
	return c
}
