// Package probe is the small network prober the conformance suite runs on
// both ends of a reachability check: in the test process (or a provider's
// probe host) and, copied over SSH, inside instances.
//
// It knows three things: serving listeners that prove who answered (a TCP
// banner and a UDP echo carrying a per-run token), dialing targets and
// saying whether they answered, and installing a DNAT rule in its own
// network namespace (the "Docker publishes a port" case).
package probe

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EnvVar, set to "1", turns a binary that imports package conformance into
// the probe program (see conformance's init).
const EnvVar = "COMPUTE_CONFORMANCE_PROBE"

// Protocols a Target can name.
const (
	TCP  = "tcp"
	UDP  = "udp"
	ICMP = "icmp"
)

// Target is one thing to probe: a TCP or UDP port on an address, or ICMP
// echo to an address.
type Target struct {
	Proto string
	Addr  netip.Addr
	Port  uint16 // zero for icmp
}

// String formats t as ParseTarget reads it: "tcp:10.0.0.1:80",
// "udp:[2001:db8::1]:53", "icmp:10.0.0.1".
func (t Target) String() string {
	if t.Proto == ICMP {
		return ICMP + ":" + t.Addr.String()
	}
	return t.Proto + ":" + netip.AddrPortFrom(t.Addr, t.Port).String()
}

// ParseTarget reads the form Target.String writes.
func ParseTarget(s string) (Target, error) {
	proto, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Target{}, fmt.Errorf("target %q: want proto:addr[:port]", s)
	}
	switch proto {
	case ICMP:
		a, err := netip.ParseAddr(rest)
		if err != nil {
			return Target{}, fmt.Errorf("target %q: %v", s, err)
		}
		return Target{Proto: ICMP, Addr: a}, nil
	case TCP, UDP:
		ap, err := netip.ParseAddrPort(rest)
		if err != nil {
			return Target{}, fmt.Errorf("target %q: %v", s, err)
		}
		if ap.Port() == 0 {
			return Target{}, fmt.Errorf("target %q: port 0", s)
		}
		return Target{Proto: proto, Addr: ap.Addr(), Port: ap.Port()}, nil
	}
	return Target{}, fmt.Errorf("target %q: unknown protocol %q", s, proto)
}

// Result is what probing one target observed.
type Result struct {
	Target string `json:"target"`
	// Open is true when the target answered: a TCP handshake completed, a
	// UDP datagram was echoed, an ICMP echo was answered.
	Open bool `json:"open"`
	// Verified is true when the answer carried the run's token, so it came
	// from the suite's own listener and not from something else.
	Verified bool `json:"verified,omitempty"`
	// Detail says how the target failed to answer (timeout, refused, ...).
	Detail string `json:"detail,omitempty"`
	// Err is set when the probe could not be carried out at all (for
	// example no ICMP socket is allowed); Open is then meaningless.
	Err string `json:"err,omitempty"`
}

// Net is where probes open their sockets: the process's own network
// namespace (Local) or a provider's probe host.
type Net interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// ListenPacket opens packet sockets. Probes ask for "ip4:icmp" (raw
	// ICMP) and "ping4" (an unprivileged ICMP datagram socket, which only
	// Local knows how to open).
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
}

// NewToken returns a random token for banners and echoes.
func NewToken() string {
	var b [8]byte
	rand.Read(b[:])
	return "cfp-" + hex.EncodeToString(b[:])
}

// All probes every target concurrently and returns the results in order.
func All(ctx context.Context, n Net, targets []Target, token string, timeout time.Duration) []Result {
	res := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { res[i] = One(ctx, n, t, token, timeout) })
	}
	wg.Wait()
	return res
}

// One probes a single target, waiting at most timeout for an answer.
func One(ctx context.Context, n Net, t Target, token string, timeout time.Duration) Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var r Result
	switch t.Proto {
	case TCP:
		r = probeTCP(ctx, n, t, token)
	case UDP:
		r = probeUDP(ctx, n, t, token, timeout)
	case ICMP:
		r = probeICMP(ctx, n, t, token, timeout)
	default:
		r.Err = "unknown protocol " + t.Proto
	}
	r.Target = t.String()
	return r
}

func probeTCP(ctx context.Context, n Net, t Target, token string) Result {
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(t.Addr, t.Port).String())
	if err != nil {
		return Result{Detail: describe(err)}
	}
	defer c.Close()
	// The handshake completing is what makes the port open; the banner
	// only tells whose listener answered.
	r := Result{Open: true}
	deadline, _ := ctx.Deadline()
	c.SetReadDeadline(deadline)
	buf := make([]byte, len(token)+1)
	if _, err := readFull(c, buf); err == nil && string(buf) == token+"\n" {
		r.Verified = true
	} else {
		r.Detail = "connected, but no banner from the suite's listener"
	}
	return r
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func probeUDP(ctx context.Context, n Net, t Target, token string, timeout time.Duration) Result {
	c, err := n.DialContext(ctx, "udp", netip.AddrPortFrom(t.Addr, t.Port).String())
	if err != nil {
		return Result{Err: "udp socket: " + err.Error()}
	}
	defer c.Close()
	payload := []byte(token + "/" + NewToken())
	// UDP gives no handshake: a port is open when the listener's echo comes
	// back. Datagrams can be lost, so send several over the timeout.
	const tries = 3
	interval := timeout / tries
	detail := "no echo"
	buf := make([]byte, 1500)
	for i := 0; i < tries; i++ {
		if ctx.Err() != nil {
			break
		}
		if _, err := c.Write(payload); err != nil {
			detail = describe(err)
		}
		wait := time.Now().Add(interval)
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		c.SetReadDeadline(wait)
		for {
			m, err := c.Read(buf)
			if err != nil {
				if !isTimeout(err) {
					detail = describe(err)
					// A refusal (ICMP port unreachable) is as closed as
					// silence; wait out the interval so retries are spaced.
					time.Sleep(time.Until(wait))
				}
				break
			}
			if string(buf[:m]) == string(payload) {
				return Result{Open: true, Verified: true}
			}
			// Someone answered with something else: open, unverified.
			return Result{Open: true, Detail: "answered, but not with the suite's echo"}
		}
	}
	return Result{Detail: detail}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// describe turns a dial error into a short reason.
func describe(err error) string {
	switch {
	case isTimeout(err), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "refused"
	case strings.Contains(err.Error(), "no route to host"):
		return "no route to host"
	case strings.Contains(err.Error(), "network is unreachable"):
		return "network unreachable"
	}
	return err.Error()
}

// ParsePorts reads a comma-separated list of ports ("" gives none).
func ParsePorts(s string) ([]uint16, error) {
	if s == "" {
		return nil, nil
	}
	var ports []uint16
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		ports = append(ports, uint16(p))
	}
	return ports, nil
}

// FormatPorts writes ports as ParsePorts reads them.
func FormatPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}
