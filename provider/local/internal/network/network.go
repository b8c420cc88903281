// Package network builds and enforces the local provider's network: a router
// network namespace owned by the provider, one Linux bridge per cluster in it,
// one network namespace per instance attached to its bridge by a veth, and
// every firewall decision made in the router namespace with nftables, outside
// the instances.
//
// The host's own network namespace gets only the veth "<prefix>-h" to the
// router, one route for the pool via the router, and one nft table
// "compute_<prefix>": an input guard that drops new connections arriving
// over "<prefix>-h" (instances and probe hosts never reach the host itself,
// on any of its addresses) and, with EgressNAT, a masquerade of the pool's
// traffic leaving the host's other interfaces (plus net.ipv4.ip_forward=1).
//
// Ingress rules live in nftables sets with concatenated interval keys, one
// group of sets per target (instance or cluster), so replacing one target's
// rules is one atomic netlink batch whose cost does not depend on how many
// rules other targets have. nft.go has the complete ruleset.
//
// A rule change also deletes the router's conntrack entries of the
// target's inbound flows, so what it removed is closed at once, established
// flows included (flows still allowed are picked up again as new). Detach
// deletes every flow of the address, so a new instance that reuses it
// inherits none.
//
// All methods need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces).
package network

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
	// (the other 63 /30s).
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

	// hostNS is the namespace that plays the host: the process's own,
	// except in tests that need a host whose forwarding and NAT they may
	// change.
	hostNS string

	// Derived addresses of the host<->router link.
	hostAddr   netip.Addr // host end ("<prefix>-h"), .1 of the first /30 of the last /24
	routerAddr netip.Addr // router end ("host0"), .2
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
	n := &Network{cfg: cfg, log: log, hostNS: hostNSPath}
	last := lastSlash24(cfg.Pool)
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

// Object names.
func (n *Network) hostLink() string             { return n.cfg.Prefix + "-h" }
func (n *Network) routerNS() string             { return nsPath(n.cfg.Prefix + "-r") }
func (n *Network) instNS(id string) string      { return nsPath(n.cfg.Prefix + "-i-" + id) }
func (n *Network) instVeth(id string) string    { return n.cfg.Prefix + "v" + id }
func (n *Network) probeNS(name string) string   { return nsPath(n.cfg.Prefix + "-p-" + name) }
func (n *Network) probeVeth(name string) string { return n.cfg.Prefix + "p" + name }

// routerLink is the router's end of the host link.
const routerLink = "host0"

// HostAddr returns the host end of the host<->router link: the source address
// instances see for traffic from the host's own network namespace (the
// "calling host" of computectl's default SSH rule).
func (n *Network) HostAddr() netip.Addr { return n.hostAddr }

// RouterNetNS returns the path of the router's network namespace file.
func (n *Network) RouterNetNS() string { return n.routerNS() }

// InstanceNetNS returns the path of instance id's network namespace file
// (whether or not it exists).
func (n *Network) InstanceNetNS(id string) string { return n.instNS(id) }

func nsPath(name string) string { return netnsDir + "/" + name }

// nftIn opens an nftables connection in the namespace at path. The returned
// func closes the namespace handle; call it after the last Flush.
func nftIn(path string) (*nftables.Conn, func(), error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	return c, func() { unix.Close(fd) }, nil
}

// routerNFT opens nftables in the router; ErrNotFound if EnsureRouter has
// not run.
func (n *Network) routerNFT() (*nftables.Conn, func(), error) {
	if !isNetNSMount(n.routerNS()) {
		return nil, nil, fmt.Errorf("router namespace %s missing (EnsureRouter not called?): %w", n.routerNS(), compute.ErrNotFound)
	}
	return nftIn(n.routerNS())
}

func (n *Network) openRouter() (*nsHandle, error) {
	if !isNetNSMount(n.routerNS()) {
		return nil, fmt.Errorf("router namespace %s missing (EnsureRouter not called?): %w", n.routerNS(), compute.ErrNotFound)
	}
	return openNS(n.routerNS())
}

// EnsureRouter creates (or completes) the router: network namespace
// /run/netns/<prefix>-r with forwarding on, the veth "<prefix>-h" (host
// netns) <-> "host0" (router) on the first /30 of the pool's last /24, the
// pool route in the host netns and the default route in the router, the base
// nftables ruleset (table inet "compute") and the anti-spoofing table
// (table bridge "compute_as") in the router, and the host table
// "compute_<prefix>" (an input guard that drops new connections from the
// router link, plus masquerading with EgressNAT). It is idempotent and
// repairs missing pieces; rules and elements already in place are kept.
func (n *Network) EnsureRouter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()

	if _, err := createNetNS(n.routerNS()); err != nil {
		return fmt.Errorf("router netns: %w", err)
	}
	r, err := openNS(n.routerNS())
	if err != nil {
		return err
	}
	defer r.Close()
	h, err := openNS(n.hostNS)
	if err != nil {
		return err
	}
	defer h.Close()

	for _, kv := range [][2]string{
		{"net.ipv6.conf.default.disable_ipv6", "1"},
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv4.ip_forward", "1"},
		// Strict reverse-path filtering: a source address is only
		// accepted on the link its route points to, so no outside
		// vantage point can pose as an instance (instances themselves
		// are pinned by the anti-spoofing table).
		{"net.ipv4.conf.default.rp_filter", "1"},
		{"net.ipv4.conf.all.rp_filter", "1"},
	} {
		if err := r.sysctl(kv[0], kv[1]); err != nil && !(os.IsNotExist(err) && strings.Contains(kv[0], "ipv6")) {
			return fmt.Errorf("router sysctl %s: %w", kv[0], err)
		}
	}
	if lo, err := r.nl.LinkByName("lo"); err == nil {
		if err := r.nl.LinkSetUp(lo); err != nil {
			return fmt.Errorf("router lo up: %w", err)
		}
	}

	// The host link. A host end without its router end (the router
	// namespace was recreated, e.g. after a reboot cleared /run) is stale.
	hostEnd, herr := h.nl.LinkByName(n.hostLink())
	_, rerr := r.nl.LinkByName(routerLink)
	if herr == nil && rerr != nil {
		if err := h.nl.LinkDel(hostEnd); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete stale %s: %w", n.hostLink(), err)
		}
		herr = rerr
	}
	if herr != nil {
		if !isNotFound(herr) {
			return fmt.Errorf("host link: %w", herr)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: n.hostLink()},
			PeerName:      routerLink,
			PeerNamespace: netlink.NsFd(int(r.ns)),
		}
		if err := h.nl.LinkAdd(veth); err != nil {
			return fmt.Errorf("create %s: %w", n.hostLink(), err)
		}
	}
	if hostEnd, err = h.nl.LinkByName(n.hostLink()); err != nil {
		return fmt.Errorf("host link: %w", err)
	}
	if err := h.sysctl("net.ipv6.conf."+n.hostLink()+".disable_ipv6", "1"); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("host link: disable ipv6: %w", err)
	}
	if err := h.nl.AddrReplace(hostEnd, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(n.hostAddr, 30))}); err != nil {
		return fmt.Errorf("address %s: %w", n.hostLink(), err)
	}
	if err := h.nl.LinkSetUp(hostEnd); err != nil {
		return fmt.Errorf("up %s: %w", n.hostLink(), err)
	}
	routerEnd, err := r.nl.LinkByName(routerLink)
	if err != nil {
		return fmt.Errorf("router link: %w", err)
	}
	if err := r.nl.AddrReplace(routerEnd, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(n.routerAddr, 30))}); err != nil {
		return fmt.Errorf("address %s: %w", routerLink, err)
	}
	if err := r.nl.LinkSetUp(routerEnd); err != nil {
		return fmt.Errorf("up %s: %w", routerLink, err)
	}
	if err := h.nl.RouteReplace(&netlink.Route{
		LinkIndex: hostEnd.Attrs().Index, Dst: ipnet(n.cfg.Pool), Gw: n.routerAddr.AsSlice(),
	}); err != nil {
		return fmt.Errorf("route %s via router: %w", n.cfg.Pool, err)
	}
	if err := r.nl.RouteReplace(&netlink.Route{
		LinkIndex: routerEnd.Attrs().Index, Dst: ipnet(netip.MustParsePrefix("0.0.0.0/0")), Gw: n.hostAddr.AsSlice(),
	}); err != nil {
		return fmt.Errorf("router default route: %w", err)
	}

	// Router rulesets, one atomic batch.
	c, done, err := nftIn(n.routerNS())
	if err != nil {
		return err
	}
	defer done()
	if err := n.routerBase(c); err != nil {
		return err
	}
	if err := n.antiSpoofBase(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("router nftables: %w", err)
	}

	// Host table.
	hc, hdone, err := nftIn(n.hostNS)
	if err != nil {
		return err
	}
	defer hdone()
	_, terr := hc.ListTableOfFamily(n.hostTable().Name, nftables.TableFamilyIPv4)
	n.hostBase(hc, terr == nil)
	if err := hc.Flush(); err != nil {
		return fmt.Errorf("host nftables table %s: %w", n.hostTable().Name, err)
	}
	if n.cfg.EgressNAT {
		if err := h.sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return fmt.Errorf("host ip_forward: %w", err)
		}
	}
	n.log.Debug("router ready", "netns", n.routerNS(), "host", n.hostAddr, "router", n.routerAddr)
	return nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// validBridge checks a bridge name: <prefix>b followed by lowercase letters
// or digits, at most 15 characters in all.
func (n *Network) validBridge(name string) error {
	rest, ok := strings.CutPrefix(name, n.cfg.Prefix+"b")
	if !ok || rest == "" || len(name) > 15 || !lowerAlnum(rest) {
		return compute.InvalidField("bridge", name, fmt.Sprintf("must be %qb followed by up to %d lowercase letters or digits", n.cfg.Prefix, 15-len(n.cfg.Prefix)-1))
	}
	return nil
}

func lowerAlnum(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// bridgeMAC derives a stable, locally administered MAC for a bridge, so its
// address does not change (and instances' neighbour entries for the
// gateway stay valid) as ports come and go.
func bridgeMAC(name string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("compute-bridge/" + name))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}

// EnsureBridge creates bridge name in the router with the subnet's first
// address as gateway, and registers it with the firewall (same-bridge traffic
// allowed, other bridges isolated, a rule chain for cluster targets).
// Idempotent.
func (n *Network) EnsureBridge(ctx context.Context, name string, subnet netip.Prefix) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.validBridge(name); err != nil {
		return err
	}
	if err := n.validSubnet(subnet); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	r, err := n.openRouter()
	if err != nil {
		return err
	}
	defer r.Close()

	br, err := r.nl.LinkByName(name)
	if isNotFound(err) {
		err = r.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: bridgeMAC(name)}})
		if err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		br, err = r.nl.LinkByName(name)
	}
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("link %s exists and is a %s, not a bridge: %w", name, br.Type(), compute.ErrConflict)
	}
	gw := netip.PrefixFrom(subnet.Addr().Next(), subnet.Bits())
	if err := r.nl.AddrReplace(br, &netlink.Addr{IPNet: ipnet(gw)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", gw, name, err)
	}
	if err := r.nl.LinkSetUp(br); err != nil {
		return fmt.Errorf("up %s: %w", name, err)
	}

	c, done, err := nftIn(n.routerNS())
	if err != nil {
		return err
	}
	defer done()
	t := computeTable()
	if err := c.SetAddElements(&nftables.Set{Table: t, Name: setBridges, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.BigEndian},
		[]nftables.SetElement{{Key: ifname(name)}}); err != nil {
		return err
	}
	if err := c.SetAddElements(&nftables.Set{Table: t, Name: setSameBr, KeyType: typeIfnameIfname, Concatenation: true},
		[]nftables.SetElement{{Key: concat(ifname(name), ifname(name))}}); err != nil {
		return err
	}
	if err := ensureTarget(c, bridgeTarget(name)); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("register bridge %s with nftables: %w", name, err)
	}
	return nil
}

func (n *Network) validSubnet(subnet netip.Prefix) error {
	last := lastSlash24(n.cfg.Pool)
	switch {
	case !subnet.IsValid() || !subnet.Addr().Is4():
		return compute.InvalidField("subnet", subnet.String(), "must be an IPv4 prefix")
	case subnet.Masked() != subnet:
		return compute.InvalidField("subnet", subnet.String(), "host bits set")
	case subnet.Bits() > 29 || subnet.Bits() < n.cfg.Pool.Bits():
		return compute.InvalidField("subnet", subnet.String(), "must be between the pool's size and /29")
	case !n.cfg.Pool.Contains(subnet.Addr()):
		return compute.InvalidField("subnet", subnet.String(), "outside the pool "+n.cfg.Pool.String())
	case subnet.Overlaps(last):
		return compute.InvalidField("subnet", subnet.String(), "overlaps the pool's last /24, reserved for links")
	}
	return nil
}

// ignoreMissing runs a one-operation nftables batch and treats "no such
// object" as success, for idempotent deletes.
func ignoreMissing(err error) error {
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// flushEach removes objects that may be partly gone already. It first
// tries all ops in one batch (each nftables commit that touches an interval
// set costs a kernel RCU grace period, ~10 ms here); if that fails because
// something is missing, it runs each op in its own batch, in order,
// ignoring ENOENT.
func flushEach(c *nftables.Conn, ops ...func(*nftables.Conn) error) error {
	queued := true
	for _, op := range ops {
		if err := op(c); err != nil {
			queued = false
			break
		}
	}
	if queued {
		if err := c.Flush(); err == nil {
			return nil
		}
	} else {
		// Send what was queued; the pass below completes it.
		_ = c.Flush()
	}
	var errs []error
	for _, op := range ops {
		if err := op(c); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := ignoreMissing(c.Flush()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func deleteTargetOps(tg target, withDispatch bool) []func(*nftables.Conn) error {
	t := computeTable()
	var ops []func(*nftables.Conn) error
	if withDispatch {
		ops = append(ops, func(c *nftables.Conn) error {
			m, e := tg.dispatchElement()
			return c.SetDeleteElements(m, []nftables.SetElement{e})
		})
	}
	ops = append(ops, func(c *nftables.Conn) error {
		ch := &nftables.Chain{Name: tg.chain, Table: t}
		c.FlushChain(ch)
		c.DelChain(ch)
		return nil
	})
	a, an, b, bn := tg.sets(t)
	for _, s := range []*nftables.Set{a, an, b, bn} {
		ops = append(ops, func(c *nftables.Conn) error { c.DelSet(s); return nil })
	}
	return ops
}

// DeleteBridge removes bridge name, its cluster rule chain and its
// registration with the firewall. A missing bridge is not an error. Callers
// detach the bridge's instances first, and must not delete a bridge that
// other targets' rules still name as a source (a new bridge of the same
// name would inherit that access).
func (n *Network) DeleteBridge(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.validBridge(name); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !isNetNSMount(n.routerNS()) {
		return nil // no router, no bridge
	}
	c, done, err := nftIn(n.routerNS())
	if err != nil {
		return err
	}
	defer done()
	t := computeTable()
	ops := []func(*nftables.Conn) error{
		func(c *nftables.Conn) error {
			return c.SetDeleteElements(&nftables.Set{Table: t, Name: setBridges, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.BigEndian},
				[]nftables.SetElement{{Key: ifname(name)}})
		},
		func(c *nftables.Conn) error {
			return c.SetDeleteElements(&nftables.Set{Table: t, Name: setSameBr, KeyType: typeIfnameIfname, Concatenation: true},
				[]nftables.SetElement{{Key: concat(ifname(name), ifname(name))}})
		},
	}
	ops = append(ops, deleteTargetOps(bridgeTarget(name), true)...)
	if err := flushEach(c, ops...); err != nil {
		return fmt.Errorf("unregister bridge %s: %w", name, err)
	}
	r, err := openNS(n.routerNS())
	if err != nil {
		return err
	}
	defer r.Close()
	if br, err := r.nl.LinkByName(name); err == nil {
		if err := r.nl.LinkDel(br); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete bridge %s: %w", name, err)
		}
	} else if !isNotFound(err) {
		return err
	}
	return nil
}

// Attachment describes one instance's network attachment.
type Attachment struct {
	ID     string           // 8 lowercase hex digits (the instance ID without "i-")
	Bridge string           // bridge to attach to (must exist)
	Addr   netip.Addr       // the instance's address in the bridge's subnet
	MAC    net.HardwareAddr // eth0's MAC; the anti-spoofing table binds the port to it
}

var idRE = regexp.MustCompile(`^[0-9a-f]{8}$`)

func validID(id string) error {
	if !idRE.MatchString(id) {
		return compute.InvalidField("id", id, "must be 8 lowercase hex digits")
	}
	return nil
}

// AttachInstance creates the instance's network namespace <prefix>-i-<ID> and
// the veth "<prefix>v<ID>" (router side, enslaved to the bridge) <-> "eth0"
// (instance side, with Addr and the bridge's prefix length, MAC, default
// route via the bridge gateway), turns IPv6 off and sets
// net.ipv4.ip_unprivileged_port_start=0 in it (a user-namespaced sshd must
// bind port 22), registers the instance as a rule target (nothing allowed
// yet) and binds the port to Addr and MAC in the anti-spoofing table before
// the port comes up. It returns the namespace path. Idempotent: an existing
// attachment is brought in line with a.
func (n *Network) AttachInstance(ctx context.Context, a Attachment) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := validID(a.ID); err != nil {
		return "", err
	}
	if err := n.validBridge(a.Bridge); err != nil {
		return "", err
	}
	if !a.Addr.Is4() {
		return "", compute.InvalidField("addr", a.Addr.String(), "must be an IPv4 address")
	}
	if len(a.MAC) != 6 || a.MAC[0]&1 != 0 || bytes.Equal(a.MAC, make([]byte, 6)) {
		return "", compute.InvalidField("mac", a.MAC.String(), "must be a unicast Ethernet address")
	}
	n.mu.Lock()
	defer n.mu.Unlock()

	r, err := n.openRouter()
	if err != nil {
		return "", err
	}
	defer r.Close()
	br, err := r.nl.LinkByName(a.Bridge)
	if isNotFound(err) {
		return "", fmt.Errorf("bridge %s: %w", a.Bridge, compute.ErrNotFound)
	} else if err != nil {
		return "", err
	}
	gw, err := bridgeGateway(r.nl, br)
	if err != nil {
		return "", err
	}
	if !gw.Contains(a.Addr) || a.Addr == gw.Addr() || a.Addr == gw.Masked().Addr() {
		return "", compute.InvalidField("addr", a.Addr.String(), "not a host address in bridge subnet "+gw.Masked().String())
	}

	nsp := n.instNS(a.ID)
	if _, err := createNetNS(nsp); err != nil {
		return "", fmt.Errorf("instance netns: %w", err)
	}
	in, err := openNS(nsp)
	if err != nil {
		return "", err
	}
	defer in.Close()
	for _, kv := range [][2]string{
		{"net.ipv6.conf.default.disable_ipv6", "1"},
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv4.ip_unprivileged_port_start", "0"},
	} {
		if err := in.sysctl(kv[0], kv[1]); err != nil && !(os.IsNotExist(err) && strings.Contains(kv[0], "ipv6")) {
			return "", fmt.Errorf("instance sysctl %s: %w", kv[0], err)
		}
	}

	// Anti-spoofing elements and the rule target first: the port must not
	// carry a frame before its bindings exist.
	vethName := n.instVeth(a.ID)
	if err := n.bindPort(vethName, a.Addr, a.MAC, instanceTarget(a.ID, a.Addr)); err != nil {
		return "", err
	}

	veth, err := r.nl.LinkByName(vethName)
	switch {
	case err == nil:
		if _, err := in.nl.LinkByName("eth0"); isNotFound(err) {
			// The namespace was recreated under an old router end.
			if err := r.nl.LinkDel(veth); err != nil && !isNotFound(err) {
				return "", fmt.Errorf("delete stale %s: %w", vethName, err)
			}
			veth = nil
		}
	case isNotFound(err):
		veth = nil
	default:
		return "", fmt.Errorf("veth %s: %w", vethName, err)
	}
	if veth == nil {
		if err := r.nl.LinkAdd(&netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: vethName, MasterIndex: br.Attrs().Index},
			PeerName:         "eth0",
			PeerNamespace:    netlink.NsFd(int(in.ns)),
			PeerHardwareAddr: a.MAC,
		}); err != nil {
			return "", fmt.Errorf("create veth %s: %w", vethName, err)
		}
		if veth, err = r.nl.LinkByName(vethName); err != nil {
			return "", fmt.Errorf("veth %s: %w", vethName, err)
		}
	}
	if veth.Attrs().MasterIndex != br.Attrs().Index {
		if err := r.nl.LinkSetMasterByIndex(veth, br.Attrs().Index); err != nil {
			return "", fmt.Errorf("attach %s to %s: %w", vethName, a.Bridge, err)
		}
	}

	eth0, err := in.nl.LinkByName("eth0")
	if err != nil {
		return "", fmt.Errorf("instance eth0: %w", err)
	}
	if !bytes.Equal(eth0.Attrs().HardwareAddr, a.MAC) {
		if err := in.nl.LinkSetDown(eth0); err != nil {
			return "", err
		}
		if err := in.nl.LinkSetHardwareAddr(eth0, a.MAC); err != nil {
			return "", fmt.Errorf("set MAC: %w", err)
		}
	}
	// Other addresses go first: deleting a primary address after adding
	// the new one would take the new (secondary) one with it.
	if addrs, err := in.nl.AddrList(eth0, netlink.FAMILY_V4); err == nil {
		for _, ad := range addrs {
			if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok && ip != a.Addr {
				if err := in.nl.AddrDel(eth0, &ad); err != nil {
					return "", fmt.Errorf("remove old address %s: %w", ip, err)
				}
			}
		}
	}
	if err := in.nl.AddrReplace(eth0, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(a.Addr, gw.Bits()))}); err != nil {
		return "", fmt.Errorf("instance address: %w", err)
	}
	if lo, err := in.nl.LinkByName("lo"); err == nil {
		if err := in.nl.LinkSetUp(lo); err != nil {
			return "", fmt.Errorf("instance lo up: %w", err)
		}
	}
	if err := in.nl.LinkSetUp(eth0); err != nil {
		return "", fmt.Errorf("instance eth0 up: %w", err)
	}
	if err := in.nl.RouteReplace(&netlink.Route{
		LinkIndex: eth0.Attrs().Index, Dst: ipnet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw.Addr().AsSlice(),
	}); err != nil {
		return "", fmt.Errorf("instance default route: %w", err)
	}
	if err := r.nl.LinkSetUp(veth); err != nil {
		return "", fmt.Errorf("up %s: %w", vethName, err)
	}
	n.log.Debug("instance attached", "id", a.ID, "bridge", a.Bridge, "addr", a.Addr, "mac", a.MAC)
	return nsp, nil
}

// bridgeGateway returns the bridge's IPv4 address with its prefix length.
func bridgeGateway(h *netlink.Handle, br netlink.Link) (netip.Prefix, error) {
	addrs, err := h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		return netip.PrefixFrom(ip, bits), nil
	}
	return netip.Prefix{}, fmt.Errorf("bridge %s has no IPv4 address (EnsureBridge not called?): %w", br.Attrs().Name, compute.ErrNotFound)
}

// portElements returns the anti-spoofing elements of port: its (port . MAC)
// and (port . IP) keys. Listing costs O(instances); only attach and detach
// use it.
func portElements(c *nftables.Conn, port string) (macs, ips []nftables.SetElement, err error) {
	t := asTable()
	for _, s := range []struct {
		set *nftables.Set
		out *[]nftables.SetElement
	}{
		{&nftables.Set{Table: t, Name: setPortMAC, KeyType: typeIfnameEther, Concatenation: true}, &macs},
		{&nftables.Set{Table: t, Name: setPortIP, KeyType: typeIfnameIP, Concatenation: true}, &ips},
	} {
		els, err := c.GetSetElements(s.set)
		if err != nil {
			return nil, nil, fmt.Errorf("list %s: %w", s.set.Name, err)
		}
		for _, e := range els {
			if len(e.Key) >= 16 && bytes.Equal(e.Key[:16], ifname(port)) {
				*s.out = append(*s.out, nftables.SetElement{Key: e.Key})
			}
		}
	}
	return macs, ips, nil
}

// bindPort replaces port's anti-spoofing elements with (port . mac) and
// (port . addr) and ensures the instance's rule target, in one batch.
func (n *Network) bindPort(port string, addr netip.Addr, mac net.HardwareAddr, tg target) error {
	c, done, err := nftIn(n.routerNS())
	if err != nil {
		return err
	}
	defer done()
	oldMACs, oldIPs, err := portElements(c, port)
	if err != nil {
		return err
	}
	t := asTable()
	macSet := &nftables.Set{Table: t, Name: setPortMAC, KeyType: typeIfnameEther, Concatenation: true}
	ipSet := &nftables.Set{Table: t, Name: setPortIP, KeyType: typeIfnameIP, Concatenation: true}
	a4 := addr.As4()
	newMAC := concat(ifname(port), mac)
	newIP := concat(ifname(port), a4[:])
	var staleIP netip.Addr
	queue := func(c *nftables.Conn, withStale bool) error {
		for _, e := range oldMACs {
			if !bytes.Equal(e.Key, newMAC) {
				if err := c.SetDeleteElements(macSet, []nftables.SetElement{e}); err != nil {
					return err
				}
			}
		}
		for _, e := range oldIPs {
			if !bytes.Equal(e.Key, newIP) {
				if err := c.SetDeleteElements(ipSet, []nftables.SetElement{e}); err != nil {
					return err
				}
				if ip, ok := netip.AddrFromSlice(e.Key[16:20]); ok {
					staleIP = ip
				}
			}
		}
		if err := c.SetAddElements(macSet, []nftables.SetElement{{Key: newMAC}}); err != nil {
			return err
		}
		if err := c.SetAddElements(ipSet, []nftables.SetElement{{Key: newIP}}); err != nil {
			return err
		}
		if withStale && staleIP.IsValid() {
			// The instance moved address: its old dispatch goes too.
			m, e := instanceTarget("", staleIP).dispatchElement()
			if err := c.SetDeleteElements(m, []nftables.SetElement{e}); err != nil {
				return err
			}
		}
		return ensureTarget(c, tg)
	}
	if err := queue(c, true); err != nil {
		return err
	}
	if err := flushTarget(c, tg, func(c *nftables.Conn) error { return queue(c, false) }); err != nil {
		return fmt.Errorf("bind port %s: %w", port, err)
	}
	return nil
}

// flushTarget sends c's batch. If it fails, the dispatch element may be a
// stale one with another verdict (a crash left it behind): the batch is
// rebuilt by requeue after a delete of that element, and sent once more.
func flushTarget(c *nftables.Conn, tg target, requeue func(*nftables.Conn) error) error {
	err := c.Flush()
	if err == nil {
		return nil
	}
	m, e := tg.dispatchElement()
	if derr := c.SetDeleteElements(m, []nftables.SetElement{e}); derr != nil {
		return err
	}
	if qerr := requeue(c); qerr != nil {
		return errors.Join(err, qerr)
	}
	if err2 := c.Flush(); err2 != nil {
		return errors.Join(err, err2)
	}
	return nil
}

// DetachInstance removes instance id's network namespace, veth, rule target
// and anti-spoofing elements. A missing instance is not an error. A process
// still running in the namespace keeps it (without its veth) alive.
func (n *Network) DetachInstance(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validID(id); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	if isNetNSMount(n.routerNS()) {
		if err := n.unbindPort(n.instVeth(id), id); err != nil {
			errs = append(errs, err)
		}
		if r, err := openNS(n.routerNS()); err != nil {
			errs = append(errs, err)
		} else {
			if l, err := r.nl.LinkByName(n.instVeth(id)); err == nil {
				if err := r.nl.LinkDel(l); err != nil && !isNotFound(err) {
					errs = append(errs, fmt.Errorf("delete %s: %w", n.instVeth(id), err))
				}
			}
			r.Close()
		}
	}
	if err := deleteNetNS(n.instNS(id)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (n *Network) unbindPort(port, id string) error {
	c, done, err := nftIn(n.routerNS())
	if err != nil {
		return err
	}
	defer done()
	macs, ips, err := portElements(c, port)
	if err != nil {
		return err
	}
	// The dispatch element is keyed by address: take it from the
	// anti-spoofing binding, or from the instance's eth0.
	var addrs []netip.Addr
	for _, e := range ips {
		if ip, ok := netip.AddrFromSlice(e.Key[16:20]); ok {
			addrs = append(addrs, ip)
		}
	}
	if len(addrs) == 0 && isNetNSMount(n.instNS(id)) {
		if in, err := openNS(n.instNS(id)); err == nil {
			if eth0, err := in.nl.LinkByName("eth0"); err == nil {
				if as, err := in.nl.AddrList(eth0, netlink.FAMILY_V4); err == nil {
					for _, a := range as {
						if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
							addrs = append(addrs, ip)
						}
					}
				}
			}
			in.Close()
		}
	}
	t := asTable()
	var ops []func(*nftables.Conn) error
	for _, e := range macs {
		ops = append(ops, func(c *nftables.Conn) error {
			return c.SetDeleteElements(&nftables.Set{Table: t, Name: setPortMAC, KeyType: typeIfnameEther, Concatenation: true}, []nftables.SetElement{e})
		})
	}
	for _, e := range ips {
		ops = append(ops, func(c *nftables.Conn) error {
			return c.SetDeleteElements(&nftables.Set{Table: t, Name: setPortIP, KeyType: typeIfnameIP, Concatenation: true}, []nftables.SetElement{e})
		})
	}
	if len(addrs) == 0 {
		// No binding and no namespace to tell the address: find the
		// dispatch element by the chain it jumps to.
		els, err := dispatchesTo(c, instanceTarget(id, netip.Addr{}).chain)
		if err != nil {
			return err
		}
		for _, e := range els {
			if ip, ok := netip.AddrFromSlice(e.Key); ok {
				addrs = append(addrs, ip)
			}
		}
	}
	for _, a := range addrs {
		ops = append(ops, deleteTargetOps(instanceTarget(id, a), true)[0])
	}
	ops = append(ops, deleteTargetOps(instanceTarget(id, netip.Addr{}), false)...)
	if err := flushEach(c, ops...); err != nil {
		return fmt.Errorf("unbind %s: %w", port, err)
	}
	// The address may go to a new instance: it must inherit no flow, in
	// either direction.
	var errs []error
	for _, a := range addrs {
		host := netip.PrefixFrom(a, 32)
		errs = append(errs, n.forget(netlink.ConntrackOrigDstIP, host), n.forget(netlink.ConntrackOrigSrcIP, host))
	}
	return errors.Join(errs...)
}

// Allow is one compiled ingress allowance. Exactly one of Source and
// SourceBridge is set: Source matches senders by address, SourceBridge
// matches senders on that cluster's bridge (whose addresses anti-spoofing
// makes trustworthy).
type Allow struct {
	Protocol     compute.Protocol  // tcp, udp, icmp or all; icmpv6 is accepted and has no effect (IPv6 is dropped)
	Ports        compute.PortRange // tcp and udp only
	Source       netip.Prefix      // IPv6 prefixes are accepted and have no effect
	SourceBridge string
}

func (n *Network) validAllows(allows []Allow) error {
	for i, a := range allows {
		field := fmt.Sprintf("allows[%d]", i)
		if !a.Protocol.Valid() {
			return compute.InvalidField(field+".protocol", string(a.Protocol), "unknown protocol")
		}
		if a.Protocol.HasPorts() {
			if a.Ports.From == 0 || a.Ports.From > a.Ports.To {
				return compute.InvalidField(field+".ports", a.Ports.String(), "must be 1-65535 with from <= to")
			}
		} else if !a.Ports.IsZero() {
			return compute.InvalidField(field+".ports", a.Ports.String(), "ports only apply to tcp and udp")
		}
		switch {
		case a.Source.IsValid() == (a.SourceBridge != ""):
			return compute.InvalidField(field+".source", a.Source.String()+a.SourceBridge, "exactly one of Source and SourceBridge must be set")
		case a.SourceBridge != "":
			if err := n.validBridge(a.SourceBridge); err != nil {
				return err
			}
		case a.Source.Masked() != a.Source:
			return compute.InvalidField(field+".source", a.Source.String(), "host bits set")
		}
	}
	return nil
}

// SetInstanceRules replaces every ingress allowance targeting the instance id
// (attached at address addr) with allows, in one atomic netlink batch whose
// cost depends only on len(allows). An empty allows closes everything
// again. The instance must be attached (else ErrNotFound). Allowances that
// can never match here (IPv6 sources, icmpv6) are accepted and have no
// effect: IPv6 is dropped at the router, so this never widens access.
func (n *Network) SetInstanceRules(ctx context.Context, id string, addr netip.Addr, allows []Allow) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validID(id); err != nil {
		return err
	}
	if !addr.Is4() {
		return compute.InvalidField("addr", addr.String(), "must be an IPv4 address")
	}
	if err := n.validAllows(allows); err != nil {
		return err
	}
	if err := n.checkAttached(id, addr); err != nil {
		return err
	}
	return n.setRules(instanceTarget(id, addr), allows)
}

// checkAttached verifies that instance id is attached with address addr, so
// that rules never create a target no DetachInstance would find.
func (n *Network) checkAttached(id string, addr netip.Addr) error {
	r, err := n.openRouter()
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := r.nl.LinkByName(n.instVeth(id)); isNotFound(err) {
		return fmt.Errorf("instance %s is not attached: %w", id, compute.ErrNotFound)
	} else if err != nil {
		return err
	}
	if !isNetNSMount(n.instNS(id)) {
		return fmt.Errorf("instance %s has no network namespace: %w", id, compute.ErrNotFound)
	}
	in, err := openNS(n.instNS(id))
	if err != nil {
		return err
	}
	defer in.Close()
	eth0, err := in.nl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("instance %s eth0: %w", id, err)
	}
	addrs, err := in.nl.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	var have []string
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		if ip == addr {
			return nil
		}
		have = append(have, ip.String())
	}
	return compute.InvalidField("addr", addr.String(), fmt.Sprintf("instance %s is attached with %v", id, have))
}

// SetBridgeRules replaces every ingress allowance targeting the whole cluster
// on bridge (which must exist, else ErrNotFound) with allows, in one atomic netlink batch whose cost depends only
// on len(allows). Traffic between the bridge's own members is always
// allowed and needs no rule.
func (n *Network) SetBridgeRules(ctx context.Context, bridge string, allows []Allow) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.validBridge(bridge); err != nil {
		return err
	}
	if err := n.validAllows(allows); err != nil {
		return err
	}
	r, err := n.openRouter()
	if err != nil {
		return err
	}
	_, err = r.nl.LinkByName(bridge)
	r.Close()
	if isNotFound(err) {
		return fmt.Errorf("bridge %s: %w", bridge, compute.ErrNotFound)
	} else if err != nil {
		return err
	}
	return n.setRules(bridgeTarget(bridge), allows)
}

func (n *Network) setRules(tg target, allows []Allow) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, done, err := n.routerNFT()
	if err != nil {
		return err
	}
	defer done()
	queue := func(c *nftables.Conn) error {
		if err := ensureTarget(c, tg); err != nil {
			return err
		}
		return fillTarget(c, tg, allows)
	}
	if err := queue(c); err != nil {
		return err
	}
	if err := flushTarget(c, tg, queue); err != nil {
		return fmt.Errorf("set rules of %s: %w", tg.chain, err)
	}
	// The new rules apply to new flows; forget the old ones so what a
	// change removed is closed now, not when its flows end.
	dst := netip.PrefixFrom(tg.addr, 32)
	if tg.bridge != "" {
		if dst, err = n.bridgeSubnet(tg.bridge); err != nil {
			return err
		}
	}
	return n.forgetFlows(dst)
}

// SpoofDrops returns how many frames the anti-spoofing table has dropped
// since EnsureRouter created it.
func (n *Network) SpoofDrops(ctx context.Context) (uint64, error) {
	cs, err := n.spoofCounts(ctx)
	var sum uint64
	for _, v := range cs {
		sum += v
	}
	return sum, err
}

// spoofCounts returns the packet count of each anti-spoofing drop rule.
func (n *Network) spoofCounts(ctx context.Context) (map[string]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, done, err := n.routerNFT()
	if err != nil {
		return nil, err
	}
	defer done()
	objs, err := c.GetObjects(asTable())
	if err != nil {
		return nil, fmt.Errorf("read anti-spoofing counters: %w", err)
	}
	m := map[string]uint64{}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && slices.Contains(spoofCounters, co.Name) {
			m[co.Name] = co.Packets
		}
	}
	return m, nil
}

// ForwardDrops returns how many packets the router's forward chain has
// dropped at its end (traffic no rule allowed) since EnsureRouter created it.
func (n *Network) ForwardDrops(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c, done, err := n.routerNFT()
	if err != nil {
		return 0, err
	}
	defer done()
	objs, err := c.GetObjects(computeTable())
	if err != nil {
		return 0, fmt.Errorf("read forward counter: %w", err)
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && co.Name == counterFwdDrop {
			return co.Packets, nil
		}
	}
	return 0, nil
}
