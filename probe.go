package compute

import (
	"context"
	"net"
	"net/netip"
)

// CallerPrefixer is implemented by providers that know the source addresses
// their instances see for traffic from the calling machine. computectl uses
// it for its default "SSH from this host only" rule. Providers that cannot
// know it without calling an outside service do not implement it.
type CallerPrefixer interface {
	CallerPrefixes(ctx context.Context) ([]netip.Prefix, error)
}

// ProbeHost is a network vantage point outside every instance and cluster,
// with its own address. Sockets it opens are in its own network namespace
// (or host), so traffic from it arrives at instances from Addr().
type ProbeHost interface {
	Addr() netip.Addr
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Listen(ctx context.Context, network, address string) (net.Listener, error)
	// ListenPacket opens a packet socket; "ip4:icmp" gives a raw ICMP socket.
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
	// Close detaches the probe host and removes everything it made.
	Close() error
}

// ProbeHoster is implemented by providers that can attach extra outside
// vantage points (the conformance suite uses them to check that a rule
// opens a port to exactly the sources it names).
type ProbeHoster interface {
	AttachProbeHost(ctx context.Context, name string) (ProbeHost, error)
}

// Inventorier is implemented by providers that can list every low-level
// object they own (network namespaces, links, mounts, security groups, ...),
// each as a short description. An empty inventory after every instance and
// cluster is gone proves that nothing leaked.
type Inventorier interface {
	Inventory(ctx context.Context) ([]string, error)
}
