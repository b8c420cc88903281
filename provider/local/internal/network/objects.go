package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Objects lists every kernel object with this Network's prefix, one short
// description each: namespace files ("netns nt-i-0a1b2c3d"), links in the
// host namespace ("link nt-h"), links in the router ("link nt-r/ntb0a1b2c3d"),
// nftables tables, per-target chains and per-instance elements ("nft inet
// compute chain i-0a1b2c3d", "nft bridge compute_as port_ip ntv0a1b2c3d .
// 10.233.1.5"). Every object that belongs to one instance or bridge names
// its ID or bridge, so callers can check for leaks of one instance. After
// Teardown the list is empty.
func (n *Network) Objects(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []string
	var errs []error

	names, err := listNetNS(n.cfg.Prefix + "-")
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		out = append(out, "netns "+name)
	}

	h, err := openNS(n.hostNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := linkList(h.nl)
	if err != nil {
		errs = append(errs, err)
	}
	own := regexp.MustCompile(`^` + n.cfg.Prefix + `(-h|[bvp][a-z0-9]+)$`)
	for _, l := range links {
		if own.MatchString(l.Attrs().Name) {
			out = append(out, "link "+l.Attrs().Name)
		}
	}
	if routes, err := h.nl.RouteList(nil, netlink.FAMILY_V4); err == nil {
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == n.cfg.Pool.String() {
				out = append(out, "route "+r.Dst.String())
			}
		}
	}
	if hc, done, err := nftIn(n.hostNS); err == nil {
		if _, err := hc.ListTableOfFamily(n.hostTable().Name, nftables.TableFamilyIPv4); err == nil {
			out = append(out, "nft ip "+n.hostTable().Name)
		}
		done()
	}

	if isNetNSMount(n.routerNS()) {
		ro, err := n.routerObjects()
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, ro...)
	}
	sort.Strings(out)
	return out, errors.Join(errs...)
}

func (n *Network) routerObjects() ([]string, error) {
	var out []string
	rname := n.cfg.Prefix + "-r"
	r, err := openNS(n.routerNS())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	links, err := linkList(r.nl)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			out = append(out, "link "+rname+"/"+l.Attrs().Name)
		}
	}
	c, done, err := nftIn(n.routerNS())
	if err != nil {
		return out, err
	}
	defer done()
	tables, err := c.ListTables()
	if err != nil {
		return out, err
	}
	for _, t := range tables {
		fam := map[nftables.TableFamily]string{nftables.TableFamilyINet: "inet", nftables.TableFamilyBridge: "bridge", nftables.TableFamilyIPv4: "ip"}[t.Family]
		out = append(out, fmt.Sprintf("nft %s %s", fam, t.Name))
	}
	if _, err := c.ListTableOfFamily(tableCompute, nftables.TableFamilyINet); err == nil {
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return out, err
		}
		for _, ch := range chains {
			if ch.Table.Name == tableCompute && ch.Hooknum == nil {
				out = append(out, "nft inet compute chain "+ch.Name)
			}
		}
		sets, err := c.GetSets(computeTable())
		if err != nil {
			return out, err
		}
		for _, s := range sets {
			if strings.HasPrefix(s.Name, "i-") || strings.HasPrefix(s.Name, "c-") {
				out = append(out, "nft inet compute set "+s.Name)
			}
		}
		for _, name := range []string{mapITargets} {
			els, err := c.GetSetElements(&nftables.Set{Table: computeTable(), Name: name, IsMap: true})
			if err != nil {
				return out, err
			}
			for _, e := range els {
				if len(e.Key) == 4 {
					out = append(out, fmt.Sprintf("nft inet compute %s %s -> %s", name, netip.AddrFrom4([4]byte(e.Key)), verdictChain(e.Val)))
				}
			}
		}
		for _, name := range []string{setBridges, setSameBr, mapCTargets} {
			els, err := c.GetSetElements(&nftables.Set{Table: computeTable(), Name: name})
			if err != nil {
				return out, err
			}
			for _, e := range els {
				out = append(out, fmt.Sprintf("nft inet compute %s %s", name, ifnameString(e.Key)))
			}
		}
	}
	if _, err := c.ListTableOfFamily(tableAS, nftables.TableFamilyBridge); err == nil {
		for _, name := range []string{setPortMAC, setPortIP} {
			els, err := c.GetSetElements(&nftables.Set{Table: asTable(), Name: name})
			if err != nil {
				return out, err
			}
			for _, e := range els {
				if len(e.Key) < 20 {
					continue
				}
				var v string
				if name == setPortMAC {
					v = net.HardwareAddr(e.Key[16:22]).String()
				} else {
					v = netip.AddrFrom4([4]byte(e.Key[16:20])).String()
				}
				out = append(out, fmt.Sprintf("nft bridge compute_as %s %s . %s", name, ifnameString(e.Key), v))
			}
		}
	}
	return out, nil
}

func ifnameString(b []byte) string {
	if len(b) > 16 {
		b = b[:16]
	}
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Teardown removes the host table, the host link (and with it the pool
// route), and every network namespace with this Network's prefix: the
// router, instances and probe hosts (their links go with them). Processes
// still running in an instance namespace keep that namespace alive, without
// links. net.ipv4.ip_forward in the host is left as it is (other users may
// rely on it). Idempotent.
func (n *Network) Teardown(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	if hc, done, err := nftIn(n.hostNS); err == nil {
		if _, err := hc.ListTableOfFamily(n.hostTable().Name, nftables.TableFamilyIPv4); err == nil {
			hc.DelTable(n.hostTable())
			if err := ignoreMissing(hc.Flush()); err != nil {
				errs = append(errs, fmt.Errorf("delete host table: %w", err))
			}
		}
		done()
	} else {
		errs = append(errs, err)
	}
	if h, err := openNS(n.hostNS); err == nil {
		if l, err := h.nl.LinkByName(n.hostLink()); err == nil {
			if err := h.nl.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s: %w", n.hostLink(), err))
			}
		}
		h.Close()
	} else {
		errs = append(errs, err)
	}
	// Delete the router's links explicitly: namespace teardown in the kernel
	// is asynchronous, and callers check right after for leftovers.
	if isNetNSMount(n.routerNS()) {
		if r, err := openNS(n.routerNS()); err == nil {
			if links, err := linkList(r.nl); err == nil {
				for _, l := range links {
					if l.Attrs().Name != "lo" {
						if err := r.nl.LinkDel(l); err != nil && !isNotFound(err) {
							errs = append(errs, fmt.Errorf("delete router link %s: %w", l.Attrs().Name, err))
						}
					}
				}
			}
			r.Close()
		}
	}
	names, err := listNetNS(n.cfg.Prefix + "-")
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if !strings.HasPrefix(name, n.cfg.Prefix+"-i-") && !strings.HasPrefix(name, n.cfg.Prefix+"-p-") && name != n.cfg.Prefix+"-r" {
			continue // not one of ours (e.g. "nt-foo" of someone else)
		}
		if err := deleteNetNS(nsPath(name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Instances returns the IDs of instances that have a network namespace
// (<prefix>-i-<ID>) or a router-side veth, attached or half-attached: what
// a garbage collector compares with the instances it knows.
func (n *Network) Instances(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	names, err := listNetNS(n.cfg.Prefix + "-i-")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if id := strings.TrimPrefix(name, n.cfg.Prefix+"-i-"); idRE.MatchString(id) {
			seen[id] = true
		}
	}
	if isNetNSMount(n.routerNS()) {
		r, err := openNS(n.routerNS())
		if err != nil {
			return nil, err
		}
		defer r.Close()
		links, err := linkList(r.nl)
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			if id, ok := strings.CutPrefix(l.Attrs().Name, n.cfg.Prefix+"v"); ok && idRE.MatchString(id) {
				seen[id] = true
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// Bridges returns the names of the bridges in the router.
func (n *Network) Bridges(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !isNetNSMount(n.routerNS()) {
		return nil, nil
	}
	r, err := openNS(n.routerNS())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	links, err := linkList(r.nl)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); ok {
			out = append(out, l.Attrs().Name)
		}
	}
	sort.Strings(out)
	return out, nil
}
