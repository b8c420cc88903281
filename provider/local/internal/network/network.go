// Package network builds and enforces the local provider's network: a router
// network namespace owned by the provider, one Linux bridge per cluster in it,
// one network namespace per instance attached to its bridge by a veth, and
// every firewall decision made in the router namespace with nftables, outside
// the instances.
//
// The host's own network namespace gets only the veth "<prefix>-h" to the
// router, one route for the pool via the router and, with EgressNAT, one nft
// table "compute_<prefix>" that masquerades the pool's traffic leaving the
// host's other interfaces.
//
// Ingress rules are nftables set elements (concatenated interval keys), so
// replacing one target's rules is one atomic netlink batch whose cost does
// not depend on how many rules other targets have.
//
// All methods need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces).
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"sync"

	"github.com/compute-sdk/compute"
)

// Config configures a Network.
type Config struct {
	// Prefix is the object-name prefix (1-4 lowercase letters). Every
	// kernel object the Network creates carries it, and Teardown and
	// Objects look only at objects with it.
	Prefix string
	// Pool is the IPv4 pool instance subnets come from. Its last /24 is
	// reserved for the host<->router link (the first /30) and probe hosts
	// (the following /30s).
	Pool netip.Prefix
	// EgressNAT masquerades the pool's traffic leaving the host through its
	// other interfaces (a table in the host's netns). Without it, traffic
	// from instances leaves the router with its own source addresses.
	EgressNAT bool
	Logger    *slog.Logger
}

// Network manages the kernel objects of one prefix. Its methods are safe for
// concurrent use within one process; across processes, callers serialise
// mutating calls (the local provider holds a file lock).
type Network struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex

	// Derived addresses of the host<->router link.
	hostAddr   netip.Addr // host end ("<prefix>-h"), .1 of the first /30 of the last /24
	routerAddr netip.Addr // router end ("host0"), .2
	linkNet    netip.Prefix
}

var prefixRE = regexp.MustCompile(`^[a-z]{1,4}$`)

// New validates cfg and returns a Network. It creates nothing; call
// EnsureRouter before anything else.
func New(cfg Config) (*Network, error) {
	if !prefixRE.MatchString(cfg.Prefix) {
		return nil, compute.InvalidField("prefix", cfg.Prefix, "must be 1-4 lowercase letters")
	}
	if !cfg.Pool.IsValid() || !cfg.Pool.Addr().Is4() {
		return nil, compute.InvalidField("pool", cfg.Pool.String(), "must be an IPv4 prefix")
	}
	if cfg.Pool.Masked() != cfg.Pool {
		return nil, compute.InvalidField("pool", cfg.Pool.String(), "host bits set")
	}
	if cfg.Pool.Bits() > 23 {
		return nil, compute.InvalidField("pool", cfg.Pool.String(), "must be /23 or larger (one /24 per subnet plus one for links)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Network{cfg: cfg, log: log}
	last := lastSlash24(cfg.Pool)
	n.linkNet = netip.PrefixFrom(last.Addr(), 30)
	n.hostAddr = last.Addr().Next()
	n.routerAddr = n.hostAddr.Next()
	return n, nil
}

// lastSlash24 returns the last /24 of pool.
func lastSlash24(pool netip.Prefix) netip.Prefix {
	a := pool.Addr().As4()
	hostBits := 32 - pool.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1<<hostBits - 1)
	v &^= 0xff
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
}

var errTODO = errors.New("network: not implemented yet")

// HostAddr returns the host end of the host<->router link: the source address
// instances see for traffic from the host's own network namespace (the
// "calling host" of computectl's default SSH rule).
func (n *Network) HostAddr() netip.Addr { return n.hostAddr }

// RouterNetNS returns the path of the router's network namespace file.
func (n *Network) RouterNetNS() string { return nsPath(n.cfg.Prefix + "-r") }

// InstanceNetNS returns the path of instance id's network namespace file
// (whether or not it exists).
func (n *Network) InstanceNetNS(id string) string { return nsPath(n.cfg.Prefix + "-i-" + id) }

func nsPath(name string) string { return "/run/netns/" + name }

// EnsureRouter creates (or completes) the router: network namespace
// /run/netns/<prefix>-r with forwarding on, the veth "<prefix>-h" (host
// netns) <-> "host0" (router) on the first /30 of the pool's last /24, the
// pool route in the host netns and the default route in the router, the base
// nftables ruleset (table inet "compute") and the anti-spoofing table
// (table bridge "compute_as") in the router, and with EgressNAT the host's
// masquerade table. It is idempotent and repairs missing pieces.
func (n *Network) EnsureRouter(ctx context.Context) error { return errTODO }

// EnsureBridge creates bridge name in the router with the subnet's first
// address as gateway, and registers it with the firewall (same-bridge traffic
// allowed, other bridges isolated). Idempotent.
func (n *Network) EnsureBridge(ctx context.Context, name string, subnet netip.Prefix) error {
	return errTODO
}

// DeleteBridge removes bridge name, its rule-set elements and its registration.
// A missing bridge is not an error. Instances still attached are detached from
// the bridge by the kernel (their veths stay); callers detach them first.
func (n *Network) DeleteBridge(ctx context.Context, name string) error { return errTODO }

// Attachment describes one instance's network attachment.
type Attachment struct {
	ID     string           // 8 lowercase hex digits (the instance ID without "i-")
	Bridge string           // bridge to attach to (must exist)
	Addr   netip.Addr       // the instance's address in the bridge's subnet
	MAC    net.HardwareAddr // eth0's MAC; the anti-spoofing table binds the port to it
}

// AttachInstance creates the instance's network namespace <prefix>-i-<ID> and
// the veth "<prefix>v<ID>" (router side, enslaved to the bridge) <-> "eth0"
// (instance side, with Addr/<bridge bits>, MAC, default route via the bridge
// gateway), turns IPv6 off and sets net.ipv4.ip_unprivileged_port_start=0 in
// it, and adds the port's anti-spoofing elements before it returns, so the
// instance is reachable from its first packet. It returns the namespace path.
// Idempotent: an existing, matching attachment is left as it is.
func (n *Network) AttachInstance(ctx context.Context, a Attachment) (nsPath string, err error) {
	return "", errTODO
}

// DetachInstance removes instance id's network namespace, veth and every nft
// element that mentions it. A missing instance is not an error.
func (n *Network) DetachInstance(ctx context.Context, id string) error { return errTODO }

// Allow is one compiled ingress allowance. Exactly one of Source and
// SourceBridge is set: Source matches senders by address, SourceBridge
// matches senders on that cluster's bridge (whose addresses anti-spoofing
// makes trustworthy).
type Allow struct {
	Protocol     compute.Protocol  // tcp, udp, icmp or all (icmpv6 is ignored: IPv6 is dropped)
	Ports        compute.PortRange // tcp and udp only
	Source       netip.Prefix      // an IPv4 prefix; IPv6 prefixes are ignored (IPv6 is dropped)
	SourceBridge string
}

// SetInstanceRules replaces every ingress allowance targeting the instance id
// (at address addr) with allows, in one atomic netlink batch.
func (n *Network) SetInstanceRules(ctx context.Context, id string, addr netip.Addr, allows []Allow) error {
	return errTODO
}

// SetBridgeRules replaces every ingress allowance targeting the whole cluster
// on bridge with allows, in one atomic netlink batch.
func (n *Network) SetBridgeRules(ctx context.Context, bridge string, allows []Allow) error {
	return errTODO
}

// SpoofDrops returns how many packets and frames the anti-spoofing table has
// dropped since EnsureRouter created it.
func (n *Network) SpoofDrops(ctx context.Context) (uint64, error) { return 0, errTODO }

// Objects lists every kernel object with this Network's prefix: namespace
// files, links in the host and router namespaces, nft tables and their
// element counts. After Teardown it is empty.
func (n *Network) Objects(ctx context.Context) ([]string, error) { return nil, errTODO }

// Teardown removes the router, the host veth and route, the masquerade table
// and every network namespace with this Network's prefix. Idempotent.
func (n *Network) Teardown(ctx context.Context) error { return errTODO }

// ProbeHost is an outside vantage point: a network namespace
// <prefix>-p-<name> with a veth to the router on its own /30 of the pool's
// last /24. It implements compute.ProbeHost.
type ProbeHost struct {
	n    *Network
	name string
	addr netip.Addr
	ns   string
}

var _ compute.ProbeHost = (*ProbeHost)(nil)

// AttachProbeHost creates probe host name (1-6 lowercase letters or digits).
func (n *Network) AttachProbeHost(ctx context.Context, name string) (*ProbeHost, error) {
	return nil, errTODO
}

// Addr returns the probe host's address.
func (p *ProbeHost) Addr() netip.Addr { return p.addr }

// NetNS returns the path of the probe host's network namespace.
func (p *ProbeHost) NetNS() string { return p.ns }

// DialContext dials from inside the probe host's namespace.
func (p *ProbeHost) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return nil, errTODO
}

// Listen listens inside the probe host's namespace.
func (p *ProbeHost) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	return nil, errTODO
}

// ListenPacket opens a packet socket inside the probe host's namespace.
func (p *ProbeHost) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	return nil, errTODO
}

// Close removes the probe host's namespace and links. Idempotent.
func (p *ProbeHost) Close() error { return errTODO }

// InNetNS runs fn on an OS thread switched into the network namespace at
// path, and switches back. Sockets fn opens belong to that namespace and stay
// there after InNetNS returns.
func InNetNS(path string, fn func() error) error { return fmt.Errorf("%w", errTODO) }
