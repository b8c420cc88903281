package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// dnatTable is the table the probe adds inside an instance. Its name is
// ours alone, so removing it never touches the instance's own rules.
const dnatTable = "compute_conformance_dnat"

// ErrPermission is returned (wrapped) when the network namespace refuses
// the change: root inside a hardened instance lacks CAP_NET_ADMIN over it.
var ErrPermission = errors.New("not permitted")

// DNAT installs, in the caller's network namespace, the rule a container
// runtime adds to publish a port: TCP to port from is rewritten to
// addr:to, in prerouting, so it applies to traffic arriving from outside.
func DNAT(from, to uint16, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("dnat: %s is not IPv4", addr)
	}
	c, err := nftables.New()
	if err != nil {
		return permission(err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: dnatTable})
	ch := c.AddChain(&nftables.Chain{
		Name:     "prerouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityNATDest,
	})
	port := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	a4 := addr.As4()
	// nft: add rule ip compute_conformance_dnat prerouting tcp dport FROM dnat to ADDR:TO
	c.AddRule(&nftables.Rule{
		Table: t,
		Chain: ch,
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port(from)},
			&expr.Immediate{Register: 1, Data: a4[:]},
			&expr.Immediate{Register: 2, Data: port(to)},
			&expr.NAT{
				Type:        expr.NATTypeDestNAT,
				Family:      unix.NFPROTO_IPV4,
				RegAddrMin:  1,
				RegProtoMin: 2,
				Specified:   true,
			},
		},
	})
	if err := c.Flush(); err != nil {
		return permission(err)
	}
	return nil
}

// RemoveDNAT deletes what DNAT added; it is not an error if nothing is there.
func RemoveDNAT() error {
	c, err := nftables.New()
	if err != nil {
		return permission(err)
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: dnatTable})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return permission(err)
	}
	return nil
}

func permission(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %v", ErrPermission, err)
	}
	return err
}
