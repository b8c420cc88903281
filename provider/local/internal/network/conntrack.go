package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// forgetFlows deletes the router's conntrack entries of connections whose
// original destination is in dst. The forward chain accepts established
// flows before any rule, so without this a revoked rule would keep every
// flow it had admitted (a UDP sender that never pauses forever), and a new
// instance given a terminated one's address would inherit its flows.
//
// Flows that are still allowed survive it: their next packet is picked up
// as new and passes the rules again, and same-bridge traffic is accepted
// whatever its state.
func (n *Network) forgetFlows(dst netip.Prefix) error {
	return n.forget(netlink.ConntrackOrigDstIP, dst)
}

// forget deletes the router's conntrack entries whose original source or
// destination (tp) is in pfx.
func (n *Network) forget(tp netlink.ConntrackFilterType, dst netip.Prefix) error {
	if !dst.IsValid() || !isNetNSMount(n.routerNS()) {
		return nil
	}
	r, err := openNS(n.routerNS())
	if err != nil {
		return err
	}
	defer r.Close()
	f := &netlink.ConntrackFilter{}
	ipnet := &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}
	if err := f.AddIPNet(tp, ipnet); err != nil {
		return fmt.Errorf("conntrack filter %s: %w", dst, err)
	}
	if _, err := r.nl.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forget flows to %s: %w", dst, err)
	}
	return nil
}

// bridgeSubnet returns the subnet of bridge in the router, from its
// gateway address.
func (n *Network) bridgeSubnet(bridge string) (netip.Prefix, error) {
	r, err := openNS(n.routerNS())
	if err != nil {
		return netip.Prefix{}, err
	}
	defer r.Close()
	l, err := r.nl.LinkByName(bridge)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	addrs, err := r.nl.AddrList(l, unix.AF_INET)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("addresses of %s: %w", bridge, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			ones, _ := a.Mask.Size()
			return netip.PrefixFrom(ip, ones).Masked(), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("bridge %s has no IPv4 address", bridge)
}
