//go:build !linux

package probe

import (
	"errors"
	"net/netip"
)

// ErrPermission is returned (wrapped) when the network namespace refuses
// the change.
var ErrPermission = errors.New("not permitted")

var errNotLinux = errors.New("dnat: only implemented on Linux")

// DNAT is only implemented on Linux.
func DNAT(from, to uint16, addr netip.Addr) error { return errNotLinux }

// RemoveDNAT is only implemented on Linux.
func RemoveDNAT() error { return errNotLinux }
