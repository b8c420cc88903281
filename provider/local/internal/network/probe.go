package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/compute-sdk/compute"
)

// ProbeHost is an outside vantage point: a network namespace
// <prefix>-p-<name> with a veth "<prefix>p<name>" to the router on its own
// /30 of the pool's last /24 (router .1, probe .2 of the /30). Like the host,
// it is outside every cluster: instances reach it (egress), it reaches
// instances only where rules allow. It implements compute.ProbeHost.
type ProbeHost struct {
	n    *Network
	name string
	addr netip.Addr
	ns   string
}

var _ compute.ProbeHost = (*ProbeHost)(nil)

// AttachProbeHost creates probe host name (lowercase letters and digits, at
// most 14-len(prefix) of them), or returns the existing one.
func (n *Network) AttachProbeHost(ctx context.Context, name string) (*ProbeHost, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if name == "" || !lowerAlnum(name) || len(n.probeVeth(name)) > 15 {
		return nil, compute.InvalidField("name", name, fmt.Sprintf("must be 1-%d lowercase letters or digits", 15-len(n.cfg.Prefix)-1))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	r, err := n.openRouter()
	if err != nil {
		return nil, err
	}
	defer r.Close()

	vethName := n.probeVeth(name)
	nsp := n.probeNS(name)
	last := lastSlash24(n.cfg.Pool)

	// Reuse the /30 of an existing link, else take the lowest free one.
	var routerEnd netip.Prefix
	used := map[netip.Addr]bool{}
	addrs, err := r.nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	veth, verr := r.nl.LinkByName(vethName)
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || !last.Contains(ip) {
			continue
		}
		base := netip.PrefixFrom(ip, 30).Masked()
		used[base.Addr()] = true
		if verr == nil && a.LinkIndex == veth.Attrs().Index {
			routerEnd = netip.PrefixFrom(ip, 30)
		}
	}
	if !routerEnd.IsValid() {
		for base := last.Addr(); last.Contains(base); base = advance(base, 4) {
			if !used[base] {
				routerEnd = netip.PrefixFrom(base.Next(), 30)
				break
			}
		}
		if !routerEnd.IsValid() {
			return nil, fmt.Errorf("no free /30 for probe host %s in %s: %w", name, last, compute.ErrQuota)
		}
	}
	probeAddr := routerEnd.Addr().Next()

	if _, err := createNetNS(nsp); err != nil {
		return nil, fmt.Errorf("probe netns: %w", err)
	}
	p, err := openNS(nsp)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	for _, k := range []string{"net.ipv6.conf.default.disable_ipv6", "net.ipv6.conf.all.disable_ipv6"} {
		_ = p.sysctl(k, "1") // best effort: absent without IPv6
	}
	if verr == nil {
		if _, err := p.nl.LinkByName("eth0"); isNotFound(err) {
			if err := r.nl.LinkDel(veth); err != nil && !isNotFound(err) {
				return nil, err
			}
			verr = err
		}
	}
	if verr != nil {
		if err := r.nl.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: vethName},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(p.ns)),
		}); err != nil {
			return nil, fmt.Errorf("create %s: %w", vethName, err)
		}
	}
	if veth, err = r.nl.LinkByName(vethName); err != nil {
		return nil, err
	}
	if err := r.nl.AddrReplace(veth, &netlink.Addr{IPNet: ipnet(routerEnd)}); err != nil {
		return nil, fmt.Errorf("address %s: %w", vethName, err)
	}
	if err := r.nl.LinkSetUp(veth); err != nil {
		return nil, err
	}
	eth0, err := p.nl.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	if err := p.nl.AddrReplace(eth0, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(probeAddr, 30))}); err != nil {
		return nil, fmt.Errorf("probe address: %w", err)
	}
	for _, l := range []netlink.Link{eth0} {
		if err := p.nl.LinkSetUp(l); err != nil {
			return nil, err
		}
	}
	if lo, err := p.nl.LinkByName("lo"); err == nil {
		if err := p.nl.LinkSetUp(lo); err != nil {
			return nil, err
		}
	}
	if err := p.nl.RouteReplace(&netlink.Route{
		LinkIndex: eth0.Attrs().Index, Dst: ipnet(netip.MustParsePrefix("0.0.0.0/0")), Gw: routerEnd.Addr().AsSlice(),
	}); err != nil {
		return nil, fmt.Errorf("probe default route: %w", err)
	}
	return &ProbeHost{n: n, name: name, addr: probeAddr, ns: nsp}, nil
}

func advance(a netip.Addr, k int) netip.Addr {
	for range k {
		a = a.Next()
	}
	return a
}

// Addr returns the probe host's address.
func (p *ProbeHost) Addr() netip.Addr { return p.addr }

// NetNS returns the path of the probe host's network namespace.
func (p *ProbeHost) NetNS() string { return p.ns }

// DialContext dials from inside the probe host's namespace.
func (p *ProbeHost) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := InNetNS(p.ns, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen listens inside the probe host's namespace.
func (p *ProbeHost) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var l net.Listener
	err := InNetNS(p.ns, func() error {
		var err error
		l, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside the probe host's namespace;
// "ip4:icmp" gives a raw ICMP socket.
func (p *ProbeHost) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := InNetNS(p.ns, func() error {
		var err error
		c, err = (&net.ListenConfig{}).ListenPacket(ctx, network, address)
		return err
	})
	return c, err
}

// Close removes the probe host's link and namespace. Idempotent.
func (p *ProbeHost) Close() error {
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	if isNetNSMount(n.routerNS()) {
		if r, err := openNS(n.routerNS()); err == nil {
			if l, err := r.nl.LinkByName(n.probeVeth(p.name)); err == nil {
				if err := r.nl.LinkDel(l); err != nil && !isNotFound(err) {
					errs = append(errs, err)
				}
			}
			r.Close()
		} else {
			errs = append(errs, err)
		}
	}
	if err := deleteNetNS(p.ns); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
