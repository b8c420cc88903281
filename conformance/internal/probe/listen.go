package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
)

// Ready is the line the listen mode prints once every socket is bound.
type Ready struct {
	TCP []uint16 `json:"tcp,omitempty"`
	UDP []uint16 `json:"udp,omitempty"`
	// V6 is true when the ports are bound on :: as well as 0.0.0.0.
	V6    bool   `json:"v6"`
	V6Err string `json:"v6err,omitempty"`
	Err   string `json:"err,omitempty"`
}

// Listeners serve the suite's TCP banner and UDP echo on a set of ports.
type Listeners struct {
	ready   Ready
	closers []io.Closer
	wg      sync.WaitGroup
	once    sync.Once

	mu       sync.Mutex
	accepted []netip.AddrPort // TCP peers, for egress checks
}

// ListenNet opens sockets for Listen: the process's own namespace or a
// probe host.
type ListenNet interface {
	Listen(ctx context.Context, network, address string) (net.Listener, error)
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
}

// LocalListen is the ListenNet of the process's own namespace.
type LocalListen struct{}

func (LocalListen) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

func (LocalListen) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}

// Listen binds every port on each of the hosts (for example "0.0.0.0" and
// "::"; a failure on an IPv6 host is recorded in Ready and tolerated) and
// serves: a TCP peer receives token and a newline, a UDP datagram is echoed
// back unchanged.
func Listen(ctx context.Context, ln ListenNet, hosts []string, tcp, udp []uint16, token string) (*Listeners, error) {
	l := &Listeners{ready: Ready{TCP: tcp, UDP: udp}}
	v6ok := true
	for _, h := range hosts {
		v6 := netip.MustParseAddr(h).Is6()
		err := l.bind(ctx, ln, h, tcp, udp, token)
		if err != nil && v6 {
			v6ok = false
			l.ready.V6Err = err.Error()
			continue
		}
		if err != nil {
			l.Close()
			return nil, err
		}
	}
	for _, h := range hosts {
		if netip.MustParseAddr(h).Is6() {
			l.ready.V6 = v6ok
		}
	}
	return l, nil
}

func (l *Listeners) bind(ctx context.Context, ln ListenNet, host string, tcp, udp []uint16, token string) error {
	tcpNet, udpNet := "tcp4", "udp4"
	if netip.MustParseAddr(host).Is6() {
		// tcp6 on the wildcard address sets IPV6_V6ONLY, so the IPv4
		// socket above and this one do not collide.
		tcpNet, udpNet = "tcp6", "udp6"
	}
	for _, p := range tcp {
		s, err := ln.Listen(ctx, tcpNet, net.JoinHostPort(host, strconv.Itoa(int(p))))
		if err != nil {
			return fmt.Errorf("listen %s/%d: %w", host, p, err)
		}
		l.closers = append(l.closers, s)
		l.wg.Go(func() { l.serveTCP(s, token) })
	}
	for _, p := range udp {
		s, err := ln.ListenPacket(ctx, udpNet, net.JoinHostPort(host, strconv.Itoa(int(p))))
		if err != nil {
			return fmt.Errorf("listen udp %s/%d: %w", host, p, err)
		}
		l.closers = append(l.closers, s)
		l.wg.Go(func() { serveUDP(s) })
	}
	return nil
}

// Ready returns what was bound.
func (l *Listeners) Ready() Ready { return l.ready }

// Accepted returns the TCP peers seen so far.
func (l *Listeners) Accepted() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]netip.AddrPort(nil), l.accepted...)
}

// Close stops serving and waits for the servers to return.
func (l *Listeners) Close() error {
	l.once.Do(func() {
		for _, c := range l.closers {
			c.Close()
		}
	})
	l.wg.Wait()
	return nil
}

func (l *Listeners) serveTCP(s net.Listener, token string) {
	for {
		c, err := s.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			l.mu.Lock()
			l.accepted = append(l.accepted, ap)
			l.mu.Unlock()
		}
		go func() {
			defer c.Close()
			io.WriteString(c, token+"\n")
		}()
	}
}

func serveUDP(s net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := s.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.WriteTo(buf[:n], from)
	}
}
