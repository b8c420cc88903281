package probe

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// probeICMP sends echo requests to an IPv4 target and waits for a reply.
// It prefers an unprivileged ping socket (needs net.ipv4.ping_group_range
// to include our group) and falls back to a raw socket (needs CAP_NET_RAW
// over the network namespace).
func probeICMP(ctx context.Context, n Net, t Target, token string, timeout time.Duration) Result {
	if !t.Addr.Is4() {
		return Result{Err: "icmp probes are IPv4 only"}
	}
	conn, dst, err := openICMP(ctx, n, t)
	if err != nil {
		return Result{Err: err.Error()}
	}
	defer conn.Close()

	id := rand.IntN(0xffff)
	payload := []byte(token + "/" + NewToken())
	const tries = 3
	interval := timeout / tries
	buf := make([]byte, 1500)
	for seq := 1; seq <= tries; seq++ {
		if ctx.Err() != nil {
			break
		}
		msg := icmp.Message{
			Type: ipv4.ICMPTypeEcho,
			Body: &icmp.Echo{ID: id, Seq: seq, Data: payload},
		}
		b, err := msg.Marshal(nil)
		if err != nil {
			return Result{Err: err.Error()}
		}
		if _, err := conn.WriteTo(b, dst); err != nil {
			return Result{Detail: describe(err)}
		}
		wait := time.Now().Add(interval)
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		conn.SetReadDeadline(wait)
		for {
			m, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // timeout: send the next request
			}
			if addrOf(from) != t.Addr.String() {
				continue // a raw socket sees every ICMP packet of the namespace
			}
			reply, err := icmp.ParseMessage(1, buf[:m])
			if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			// A ping socket rewrites the ID, so match on the payload, which
			// carries a fresh nonce.
			if echo, ok := reply.Body.(*icmp.Echo); ok && bytes.Equal(echo.Data, payload) {
				return Result{Open: true, Verified: true}
			}
		}
	}
	return Result{Detail: "no echo reply"}
}

func openICMP(ctx context.Context, n Net, t Target) (net.PacketConn, net.Addr, error) {
	ip := net.IP(t.Addr.AsSlice())
	c, err := n.ListenPacket(ctx, "ping4", "0.0.0.0")
	if err == nil {
		return c, &net.UDPAddr{IP: ip}, nil
	}
	c, rawErr := n.ListenPacket(ctx, "ip4:icmp", "0.0.0.0")
	if rawErr == nil {
		return c, &net.IPAddr{IP: ip}, nil
	}
	return nil, nil, errors.New("no ICMP socket allowed (ping socket: " + err.Error() +
		"; raw socket: " + rawErr.Error() + "); ping sockets need net.ipv4.ping_group_range to include the prober's group")
}

func addrOf(a net.Addr) string {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.IP.String()
	case *net.IPAddr:
		return a.IP.String()
	}
	if a == nil {
		return ""
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// Local is the Net of the calling process's own network namespace.
type Local struct{}

func (Local) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (Local) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	switch network {
	case "ping4":
		// x/net/icmp opens a SOCK_DGRAM/IPPROTO_ICMP socket for "udp4".
		return icmp.ListenPacket("udp4", address)
	case "ip4:icmp":
		return icmp.ListenPacket("ip4:icmp", address)
	}
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}
