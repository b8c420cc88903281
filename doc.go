// Package compute is a provider-neutral SDK for creating and managing compute
// instances, clusters of instances, and the firewall rules that let traffic
// reach them.
//
// Every provider meets one security model (see SECURITY.md at the repository
// root): instances run OpenSSH and systemd, SSH is key-only, inbound traffic is
// denied by default by a firewall that sits outside the instance, members of a
// cluster reach each other on every port while clusters are isolated from each
// other, data at rest is encrypted, and every API is spoken over TLS 1.2+.
//
// # Providers
//
// A program imports the providers it uses for their side effect of
// registering themselves, in the style of database/sql drivers:
//
//	import _ "github.com/compute-sdk/compute/provider/local"
//
//	p, err := compute.Open(ctx, "local", nil)
//
// Importing this package alone pulls in no cloud SDK.
//
// The [Provider] interface is the required core. Everything else is optional
// and discovered by type assertion ([StopStarter], [Rebooter], [FirewallManager],
// [GarbageCollector], [InstanceTypeLister]); [CapabilitiesOf] reports what a
// provider supports. A provider that cannot honour a request returns
// [ErrUnsupported]; it never ignores it.
//
// # Errors
//
// Errors are classified by sentinels usable with errors.Is: [ErrNotFound],
// [ErrInvalidArgument], [ErrConflict], [ErrUnsupported], [ErrQuota],
// [ErrCapacity], [ErrTransient], and [ErrPrecondition] for a host that lacks a
// privilege or kernel feature a provider needs (the error says how to fix it).
// Invalid input is reported as a [*FieldError] naming the field, the value and
// the reason; it wraps ErrInvalidArgument.
package compute
