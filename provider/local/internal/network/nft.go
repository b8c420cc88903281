package network

// nftables layout in the router namespace.
//
// table inet compute
//   set bridges   { type ifname }                  every cluster bridge
//   set samebr    { type ifname . ifname }         (br, br) for every bridge
//   map itargets  { type ipv4_addr : verdict }     instance address -> jump i-<id>
//   map ctargets  { type ifname : verdict }        bridge -> jump c-<bridge>
//   chain forward { hook forward; policy drop
//     meta nfproto ipv6 drop
//     ct state established,related accept
//     ct state invalid drop
//     iifname . oifname @samebr accept             members of one cluster talk freely
//     oifname != @bridges accept                   egress (and outside<->outside)
//     ip daddr vmap @itargets                      rules targeting one instance
//     oifname vmap @ctargets                       rules targeting a cluster
//     counter name fwd_drop drop }
//   chain input { hook input; policy drop; iifname lo accept; ct state established,related accept }
//   chain i-<id> / c-<bridge> (one per target) {
//     ip saddr . meta l4proto . th dport @<chain>-a accept    CIDR sources, tcp/udp ports
//     ip saddr . meta l4proto @<chain>-an accept              CIDR sources, icmp / all
//     iifname . meta l4proto . th dport @<chain>-b accept     source bridge, tcp/udp ports
//     iifname . meta l4proto @<chain>-bn accept }             source bridge, icmp / all
//
// Why per-target sets and chains instead of one global set keyed on
// `ip daddr . ip saddr . meta l4proto . th dport`: replacing one target's
// rules in a global set means deleting exactly its old elements, which the
// kernel can only tell us by dumping the whole set (cost proportional to
// every target's rules) or which we would have to remember on disk. A set
// per target can be flushed (NFT_MSG_DELSETELEM without elements) and
// refilled in one batch, so SetInstanceRules costs O(own rules) whatever the
// other targets hold, and the dispatch is one hash lookup (the vmaps).
// Intervals in concatenations (pipapo) work here: kernel 6.18, and
// google/nftables v0.3.0 sends NFTA_SET_DESC_CONCAT and NFTA_SET_ELEM_KEY_END.
//
// table bridge compute_as (anti-spoofing, keyed on the ingress bridge port)
//   set port_mac { type ifname . ether_addr }
//   set port_ip  { type ifname . ipv4_addr }
//   chain pre { hook prerouting priority -300; policy accept
//     iifname "<prefix>v*" ether type != { ip, arp } counter drop
//     iifname "<prefix>v*" iifname . ether saddr != @port_mac counter drop
//     iifname "<prefix>v*" ether type arp iifname . arp saddr ether != @port_mac counter drop
//     iifname "<prefix>v*" ether type ip iifname . ip saddr != @port_ip counter drop
//     iifname "<prefix>v*" ether type arp iifname . arp saddr ip != @port_ip counter drop }
// The inet family cannot do this: with br_netfilter its iifname is the
// bridge, not the port (see nspawn-hardening.md section 3).
//
// table ip compute_<prefix> in the host namespace
//   chain input { hook input; policy accept
//     iifname "<prefix>-h" ct state established,related accept
//     iifname "<prefix>-h" drop }     instances and probe hosts never reach the host itself
//   chain post { hook postrouting; nat } only with EgressNAT:
//     ip saddr <pool> oifname != "<prefix>-h" masquerade

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/compute-sdk/compute"
)

const (
	tableCompute = "compute"
	tableAS      = "compute_as"

	setBridges  = "bridges"
	setSameBr   = "samebr"
	mapITargets = "itargets"
	mapCTargets = "ctargets"
	setPortMAC  = "port_mac"
	setPortIP   = "port_ip"

	counterFwdDrop = "fwd_drop"
)

// Anti-spoofing counters, one per drop rule.
var spoofCounters = []string{"spoof_type", "spoof_mac", "spoof_arp_mac", "spoof_ip", "spoof_arp_ip"}

var (
	typeIfnameIfname  = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)
	typeIfnameEther   = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr)
	typeIfnameIP      = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)
	typeAddrProtoPort = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeAddrProto     = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto)
	typeIfProtoPort   = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeInetProto, nftables.TypeInetService)
	typeIfProto       = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeInetProto)
)

func computeTable() *nftables.Table {
	return &nftables.Table{Name: tableCompute, Family: nftables.TableFamilyINet}
}

func asTable() *nftables.Table {
	return &nftables.Table{Name: tableAS, Family: nftables.TableFamilyBridge}
}

func (n *Network) hostTable() *nftables.Table {
	return &nftables.Table{Name: "compute_" + n.cfg.Prefix, Family: nftables.TableFamilyIPv4}
}

// ifname encodes an interface name as nftables stores it: IFNAMSIZ bytes,
// NUL padded.
func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

// pad4 pads b with zeros to a multiple of 4 bytes: each field of a
// concatenated key occupies whole 32-bit registers.
func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func concat(fields ...[]byte) []byte {
	var out []byte
	for _, f := range fields {
		out = append(out, pad4(append([]byte(nil), f...))...)
	}
	return out
}

func port16(p uint16) []byte { return binaryutil.BigEndian.PutUint16(p) }

// Expression helpers. Registers 8.. are the 32-bit registers that
// concatenations are loaded into; register 1 is the first 128-bit one.
func metaLoad(key expr.MetaKey, reg uint32) expr.Any {
	return &expr.Meta{Key: key, Register: reg}
}

func ipSaddr(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
}

func ipDaddr(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
}

func thDport(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

func ctStateIn(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ipv4Only matches IPv4 packets. IPv6 is dropped before any rule that
// loads addresses, so this is a no-op for the verdict; it is there so that
// nft(8) can show the loads as "ip saddr"/"ip daddr" when debugging.
func ipv4Only() []expr.Any {
	return exprs(metaLoad(expr.MetaKeyNFPROTO, 1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}})
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func exprs(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case expr.Any:
			out = append(out, v)
		case []expr.Any:
			out = append(out, v...)
		default:
			panic(fmt.Sprintf("exprs: %T", p))
		}
	}
	return out
}

// routerBase queues the router's base ruleset on c. Sets, maps, counters,
// tables and per-target chains that exist are kept; the two base chains are
// flushed and refilled, so re-running it repairs and upgrades them
// atomically.
func (n *Network) routerBase(c *nftables.Conn) error {
	t := c.AddTable(computeTable())
	sets := []*nftables.Set{
		{Table: t, Name: setBridges, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.BigEndian},
		{Table: t, Name: setSameBr, KeyType: typeIfnameIfname, Concatenation: true},
		{Table: t, Name: mapITargets, KeyType: nftables.TypeIPAddr, IsMap: true, DataType: nftables.TypeVerdict},
		{Table: t, Name: mapCTargets, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.BigEndian, IsMap: true, DataType: nftables.TypeVerdict},
	}
	for _, s := range sets {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: counterFwdDrop})

	drop := nftables.ChainPolicyDrop
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	c.FlushChain(fwd)
	c.FlushChain(in)

	rules := [][]expr.Any{
		// IPv6 is not offered (instances have it disabled): drop it all.
		exprs(metaLoad(expr.MetaKeyNFPROTO, 1),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			verdict(expr.VerdictDrop)),
		exprs(ctStateIn(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept)),
		exprs(ctStateIn(expr.CtStateBitINVALID), verdict(expr.VerdictDrop)),
		// Same bridge: br_netfilter is on (bridge-nf-call-iptables=1), so
		// bridged traffic between members of one cluster passes this
		// chain with iifname = oifname = the bridge.
		exprs(metaLoad(expr.MetaKeyIIFNAME, 8), metaLoad(expr.MetaKeyOIFNAME, 12),
			&expr.Lookup{SourceRegister: 8, SetName: setSameBr, SetID: sets[1].ID},
			verdict(expr.VerdictAccept)),
		// Egress: anything not headed into a cluster bridge (to host0, to
		// probe links). Traffic into a bridge falls through to the rules.
		exprs(metaLoad(expr.MetaKeyOIFNAME, 1),
			&expr.Lookup{SourceRegister: 1, SetName: setBridges, SetID: sets[0].ID, Invert: true},
			verdict(expr.VerdictAccept)),
		exprs(ipv4Only(), ipDaddr(1),
			&expr.Lookup{SourceRegister: 1, SetName: mapITargets, SetID: sets[2].ID, IsDestRegSet: true, DestRegister: 0}),
		exprs(metaLoad(expr.MetaKeyOIFNAME, 1),
			&expr.Lookup{SourceRegister: 1, SetName: mapCTargets, SetID: sets[3].ID, IsDestRegSet: true, DestRegister: 0}),
		exprs(&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterFwdDrop}, verdict(expr.VerdictDrop)),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: r})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: exprs(metaLoad(expr.MetaKeyIIFNAME, 1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")}, verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: exprs(
		ctStateIn(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))})
	return nil
}

// antiSpoofBase queues the bridge-family anti-spoofing table on c, keeping
// existing sets and counters.
func (n *Network) antiSpoofBase(c *nftables.Conn) error {
	t := c.AddTable(asTable())
	macs := &nftables.Set{Table: t, Name: setPortMAC, KeyType: typeIfnameEther, Concatenation: true}
	ips := &nftables.Set{Table: t, Name: setPortIP, KeyType: typeIfnameIP, Concatenation: true}
	for _, s := range []*nftables.Set{macs, ips} {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	for _, name := range spoofCounters {
		c.AddObj(&nftables.CounterObj{Table: t, Name: name})
	}
	prio := nftables.ChainPriority(-300)
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: "pre", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: &prio, Policy: &accept})
	c.FlushChain(pre)

	// Every port named like an instance veth is checked, whether or not
	// it has elements: a port without them can send nothing.
	port := exprs(metaLoad(expr.MetaKeyIIFNAME, 1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(n.cfg.Prefix + "v")})
	etherType := func(op expr.CmpOp, t uint16) expr.Any {
		return &expr.Cmp{Op: op, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)}
	}
	loadEtherType := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2}
	drop := func(counter string) []expr.Any {
		return exprs(&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counter}, verdict(expr.VerdictDrop))
	}
	notIn := func(set *nftables.Set, field expr.Any) []expr.Any {
		return exprs(metaLoad(expr.MetaKeyIIFNAME, 8), field,
			&expr.Lookup{SourceRegister: 8, SetName: set.Name, SetID: set.ID, Invert: true})
	}
	rules := [][]expr.Any{
		// Only IPv4 and ARP; this also drops VLAN-tagged and IPv6 frames.
		exprs(port, loadEtherType, etherType(expr.CmpOpNeq, unix.ETH_P_IP), etherType(expr.CmpOpNeq, unix.ETH_P_ARP),
			drop(spoofCounters[0])),
		exprs(port, notIn(macs, &expr.Payload{DestRegister: 12, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}),
			drop(spoofCounters[1])),
		exprs(port, loadEtherType, etherType(expr.CmpOpEq, unix.ETH_P_ARP),
			notIn(macs, &expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6}),
			drop(spoofCounters[2])),
		exprs(port, loadEtherType, etherType(expr.CmpOpEq, unix.ETH_P_IP),
			notIn(ips, &expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}),
			drop(spoofCounters[3])),
		exprs(port, loadEtherType, etherType(expr.CmpOpEq, unix.ETH_P_ARP),
			notIn(ips, &expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4}),
			drop(spoofCounters[4])),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: r})
	}
	return nil
}

// ipsSrcNAT is IPS_SRC_NAT from linux/netfilter/nf_conntrack_common.h.
const ipsSrcNAT = 1 << 4

// hostBase queues the host-namespace table: the input guard and, with
// EgressNAT, the masquerade chain. The table is recreated from scratch
// (it holds no state worth keeping), atomically.
func (n *Network) hostBase(c *nftables.Conn, exists bool) {
	t := n.hostTable()
	if exists {
		c.DelTable(t)
	}
	t = c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fromRouter := exprs(metaLoad(expr.MetaKeyIIFNAME, 1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n.hostLink())})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: exprs(fromRouter,
		ctStateIn(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: exprs(fromRouter, verdict(expr.VerdictDrop))})
	// The host end of the link is "the calling host" that the default SSH
	// rule admits. A connection the host source-NATs towards the router
	// (a Docker container behind its masquerade, another prefix's egress
	// NAT) would leave with that very address and pass such a rule: drop
	// new connections that leave towards the router source-NATed. This
	// runs after the NAT chains (priority srcnat+1), when the NAT binding
	// is known; replies to instances' own NATed egress are in the reply
	// direction and pass.
	post := c.AddChain(&nftables.Chain{Name: "snatguard", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(101), Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: exprs(
		metaLoad(expr.MetaKeyOIFNAME, 1),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n.hostLink())},
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}}, // IP_CT_DIR_ORIGINAL
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsSrcNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		verdict(expr.VerdictDrop))})
	if !n.cfg.EgressNAT {
		return
	}
	post = c.AddChain(&nftables.Chain{Name: "post", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	pool := n.cfg.Pool
	mask := net.CIDRMask(pool.Bits(), 32)
	addr := pool.Addr().As4()
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: exprs(
		ipSaddr(1),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
		metaLoad(expr.MetaKeyOIFNAME, 1),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n.hostLink())},
		&expr.Masq{})})
}

// target names the chain and sets of one rule target.
type target struct {
	chain string
	// dispatch element: exactly one of addr (instance) or bridge (cluster)
	addr   netip.Addr
	bridge string
}

func instanceTarget(id string, addr netip.Addr) target { return target{chain: "i-" + id, addr: addr} }
func bridgeTarget(bridge string) target                { return target{chain: "c-" + bridge, bridge: bridge} }

func (tg target) sets(t *nftables.Table) (a, an, b, bn *nftables.Set) {
	mk := func(suffix string, kt nftables.SetDatatype) *nftables.Set {
		return &nftables.Set{Table: t, Name: tg.chain + suffix, KeyType: kt, Concatenation: true, Interval: true}
	}
	return mk("-a", typeAddrProtoPort), mk("-an", typeAddrProto), mk("-b", typeIfProtoPort), mk("-bn", typeIfProto)
}

func (tg target) dispatchElement() (*nftables.Set, nftables.SetElement) {
	t := computeTable()
	v := &expr.Verdict{Kind: expr.VerdictJump, Chain: tg.chain}
	if tg.bridge != "" {
		return &nftables.Set{Table: t, Name: mapCTargets, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.BigEndian, IsMap: true, DataType: nftables.TypeVerdict},
			nftables.SetElement{Key: ifname(tg.bridge), VerdictData: v}
	}
	a := tg.addr.As4()
	return &nftables.Set{Table: t, Name: mapITargets, KeyType: nftables.TypeIPAddr, IsMap: true, DataType: nftables.TypeVerdict},
		nftables.SetElement{Key: a[:], VerdictData: v}
}

// ensureTarget queues the target's chain, sets, rules and dispatch element.
// Every piece is created if missing; the chain's four rules are replaced.
func ensureTarget(c *nftables.Conn, tg target) error {
	t := computeTable()
	a, an, b, bn := tg.sets(t)
	for _, s := range []*nftables.Set{a, an, b, bn} {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	ch := c.AddChain(&nftables.Chain{Name: tg.chain, Table: t})
	c.FlushChain(ch)
	lookup := func(s *nftables.Set) expr.Any { return &expr.Lookup{SourceRegister: 8, SetName: s.Name, SetID: s.ID} }
	l4 := metaLoad(expr.MetaKeyL4PROTO, 9)
	l4b := metaLoad(expr.MetaKeyL4PROTO, 12)
	for _, r := range [][]expr.Any{
		exprs(ipv4Only(), ipSaddr(8), l4, thDport(10), lookup(a), verdict(expr.VerdictAccept)),
		exprs(ipv4Only(), ipSaddr(8), l4, lookup(an), verdict(expr.VerdictAccept)),
		exprs(metaLoad(expr.MetaKeyIIFNAME, 8), l4b, thDport(13), lookup(b), verdict(expr.VerdictAccept)),
		exprs(metaLoad(expr.MetaKeyIIFNAME, 8), l4b, lookup(bn), verdict(expr.VerdictAccept)),
	} {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
	}
	m, e := tg.dispatchElement()
	return c.SetAddElements(m, []nftables.SetElement{e})
}

// deleteTarget queues removal of the target's dispatch element (if
// withDispatch), chain and sets.
func deleteTarget(c *nftables.Conn, tg target, withDispatch bool) error {
	t := computeTable()
	if withDispatch {
		m, e := tg.dispatchElement()
		if err := c.SetDeleteElements(m, []nftables.SetElement{e}); err != nil {
			return err
		}
	}
	ch := &nftables.Chain{Name: tg.chain, Table: t}
	c.FlushChain(ch)
	c.DelChain(ch)
	a, an, b, bn := tg.sets(t)
	for _, s := range []*nftables.Set{a, an, b, bn} {
		c.DelSet(s)
	}
	return nil
}

// protoRange returns the l4proto interval an Allow covers and whether it has
// ports. ok is false for allowances this IPv4-only router never matches
// (icmpv6).
func protoRange(a Allow) (lo, hi byte, ports, ok bool) {
	switch a.Protocol {
	case compute.ProtocolTCP:
		return unix.IPPROTO_TCP, unix.IPPROTO_TCP, true, true
	case compute.ProtocolUDP:
		return unix.IPPROTO_UDP, unix.IPPROTO_UDP, true, true
	case compute.ProtocolICMP:
		return unix.IPPROTO_ICMP, unix.IPPROTO_ICMP, false, true
	case compute.ProtocolAll:
		return 0, 255, false, true
	}
	return 0, 0, false, false
}

// prefixRange returns the first and last address of an IPv4 prefix.
func prefixRange(p netip.Prefix) (first, last [4]byte) {
	p = p.Masked()
	first = p.Addr().As4()
	v := binary.BigEndian.Uint32(first[:]) | (uint32(1)<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(last[:], v)
	if p.Bits() == 0 {
		last = [4]byte{255, 255, 255, 255}
	}
	return first, last
}

// fillTarget queues the replacement of the target's set contents with allows.
func fillTarget(c *nftables.Conn, tg target, allows []Allow) error {
	t := computeTable()
	a, an, b, bn := tg.sets(t)
	boxes := map[*nftables.Set][]box{}
	for _, al := range allows {
		lo, hi, ports, ok := protoRange(al)
		if !ok {
			continue
		}
		var bx box
		bx.dim[1] = [2]uint32{uint32(lo), uint32(hi)}
		if ports {
			bx.dim[2] = [2]uint32{uint32(al.Ports.From), uint32(al.Ports.To)}
		}
		if al.SourceBridge != "" {
			bx.group = al.SourceBridge
		} else {
			if !al.Source.Addr().Is4() {
				continue // IPv6 is dropped before the rules anyway
			}
			f, l := prefixRange(al.Source)
			bx.dim[0] = [2]uint32{binary.BigEndian.Uint32(f[:]), binary.BigEndian.Uint32(l[:])}
		}
		var set *nftables.Set
		switch {
		case ports && al.SourceBridge != "":
			set = b
		case ports:
			set = a
		case al.SourceBridge != "":
			set = bn
		default:
			set = an
		}
		boxes[set] = append(boxes[set], bx)
	}
	for _, s := range []*nftables.Set{a, an, b, bn} {
		c.FlushSet(s)
		if len(boxes[s]) == 0 {
			continue
		}
		ported := s == a || s == b
		var elems []nftables.SetElement
		for _, bx := range disjoint(boxes[s]) {
			var src, srcEnd []byte
			if bx.group != "" {
				src, srcEnd = ifname(bx.group), ifname(bx.group)
			} else {
				src = binary.BigEndian.AppendUint32(nil, bx.dim[0][0])
				srcEnd = binary.BigEndian.AppendUint32(nil, bx.dim[0][1])
			}
			key := [][]byte{src, {byte(bx.dim[1][0])}}
			end := [][]byte{srcEnd, {byte(bx.dim[1][1])}}
			if ported {
				key = append(key, port16(uint16(bx.dim[2][0])))
				end = append(end, port16(uint16(bx.dim[2][1])))
			}
			elems = append(elems, nftables.SetElement{Key: concat(key...), KeyEnd: concat(end...)})
		}
		if err := c.SetAddElements(s, elems); err != nil {
			return err
		}
	}
	return nil
}

// box is one set element before encoding: inclusive ranges over (source
// address, l4proto, port); group is the source bridge name, if any (boxes
// of different groups never overlap).
type box struct {
	group string
	dim   [3][2]uint32
}

func (b box) overlaps(o box) bool {
	if b.group != o.group {
		return false
	}
	for d := range b.dim {
		if b.dim[d][1] < o.dim[d][0] || o.dim[d][1] < b.dim[d][0] {
			return false
		}
	}
	return true
}

// minus returns b without o, as up to six disjoint boxes.
func (b box) minus(o box) []box {
	if !b.overlaps(o) {
		return []box{b}
	}
	var out []box
	for d := range b.dim {
		if b.dim[d][0] < o.dim[d][0] {
			p := b
			p.dim[d] = [2]uint32{b.dim[d][0], o.dim[d][0] - 1}
			out = append(out, p)
			b.dim[d][0] = o.dim[d][0]
		}
		if b.dim[d][1] > o.dim[d][1] {
			p := b
			p.dim[d] = [2]uint32{o.dim[d][1] + 1, b.dim[d][1]}
			out = append(out, p)
			b.dim[d][1] = o.dim[d][1]
		}
	}
	return out // what is left of b lies inside o
}

// disjoint returns boxes covering exactly the union of in, none overlapping.
// The kernel's concatenated-interval set (pipapo) refuses an element whose
// start or end lies inside another element, and rules may legitimately
// overlap (a /8 and a /16 on overlapping port ranges), so elements are made
// disjoint first. Callers pass policy-normalised rules, so this rarely
// splits anything.
func disjoint(in []box) []box {
	var out []box
	for _, b := range in {
		pieces := []box{b}
		for _, o := range out {
			var next []box
			for _, p := range pieces {
				next = append(next, p.minus(o)...)
			}
			pieces = next
			if len(pieces) == 0 {
				break
			}
		}
		out = append(out, pieces...)
	}
	return out
}

// verdictChain returns the chain a vmap element jumps to, from the raw
// NFTA_DATA_VERDICT attribute google/nftables leaves in SetElement.Val
// (it decodes values, not verdicts): nested NFTA_VERDICT_CODE and
// NFTA_VERDICT_CHAIN attributes.
func verdictChain(val []byte) string {
	for len(val) >= 4 {
		l := int(binary.NativeEndian.Uint16(val[0:2]))
		typ := binary.NativeEndian.Uint16(val[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(val) {
			return ""
		}
		if typ == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(string(val[4:l]), "\x00")
		}
		val = val[(l+3)&^3:]
	}
	return ""
}

// dispatchesTo lists the itargets elements that jump to chain. It costs
// O(instances) and serves only cleanup of half-made state.
func dispatchesTo(c *nftables.Conn, chain string) ([]nftables.SetElement, error) {
	m, _ := target{chain: chain, addr: netip.IPv4Unspecified()}.dispatchElement()
	els, err := c.GetSetElements(m)
	if err != nil {
		return nil, err
	}
	var out []nftables.SetElement
	for _, e := range els {
		if verdictChain(e.Val) == chain {
			out = append(out, nftables.SetElement{Key: e.Key})
		}
	}
	return out, nil
}
