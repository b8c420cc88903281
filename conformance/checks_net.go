package conformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"github.com/compute-sdk/compute/conformance/internal/probe"
)

// selfCheck asks each member's own listener, over loopback, whether it is
// serving proto/port: a closed port from outside only means something when
// the listener behind it is alive.
func (s *suite) selfCheck(ctx context.Context, proto string, port uint16, members ...*member) []string {
	var p []string
	lo := netip.MustParseAddr("127.0.0.1")
	for _, m := range members {
		res, err := m.dial(ctx, []probe.Target{{Proto: proto, Addr: lo, Port: port}}, s.token, probeTimeout)
		if err != nil {
			p = append(p, fmt.Sprintf("%s: control probe: %v", m.key, err))
			continue
		}
		if !res[0].Open || !res[0].Verified {
			p = append(p, fmt.Sprintf("%s: its own listener on %s/%d does not answer on loopback (%s %s): the check is inconclusive", m.key, proto, port, res[0].Detail, res[0].Err))
		}
	}
	return p
}

func (s *suite) readyMembers() ([]*member, []string) {
	var ms []*member
	var p []string
	for _, m := range s.members {
		if err := s.ready(m.key); err != nil {
			p = append(p, err.Error())
			continue
		}
		ms = append(ms, m)
	}
	return ms, p
}

func (s *suite) checkDenyPort(ctx context.Context, proto string) outcome {
	ms, problems := s.readyMembers()
	port := s.port(portDeny)
	problems = append(problems, s.selfCheck(ctx, proto, port, ms...)...)
	var exps []expectation
	v6 := 0
	for _, m := range ms {
		exps = append(exps, expectation{from: s.host(), to: m, proto: proto, port: port, want: false})
		if ph, ok := s.probeHost(); ok {
			exps = append(exps, expectation{from: ph, to: m, proto: proto, port: port, want: false})
		}
		if m.addr6.IsValid() && m.listener.ready.V6 {
			exps = append(exps, expectation{from: s.host(), to: m, proto: proto, port: port, want: false, v6: true})
			v6++
		}
	}
	problems = append(problems, s.verify(ctx, 0, exps...)...)
	bound := "0.0.0.0 and ::"
	if len(ms) > 0 && !ms[0].listener.ready.V6 {
		bound = "0.0.0.0 (:: unavailable inside: " + ms[0].listener.ready.V6Err + ")"
	}
	return failures(problems, "listeners on %s %s/%d answer locally but not from outside: %s", bound, proto, port, describeExps(exps))
}

func (s *suite) checkDenyTCP(ctx context.Context) outcome { return s.checkDenyPort(ctx, "tcp") }
func (s *suite) checkDenyUDP(ctx context.Context) outcome { return s.checkDenyPort(ctx, "udp") }

func (s *suite) checkDenyICMP(ctx context.Context) outcome {
	var exps []expectation
	for _, m := range s.members {
		exps = append(exps, expectation{from: s.host(), to: m, proto: "icmp", want: false})
		if ph, ok := s.probeHost(); ok {
			exps = append(exps, expectation{from: ph, to: m, proto: "icmp", want: false})
		}
	}
	problems := s.verify(ctx, 0, exps...)
	// Control: the instance does answer echo requests, from its cluster
	// peer, so silence from outside is the firewall's doing.
	control := "a2 pings a1 (control)"
	if err := s.ready("a1", "a2"); err != nil {
		control = "no control: " + err.Error()
	} else if cp := s.verify(ctx, 0, expectation{from: s.from("a2"), to: s.member("a1"), proto: "icmp", want: true}); len(cp) > 0 {
		if strings.Contains(cp[0], "could not probe") {
			control = "no control (" + cp[0] + ")"
		} else {
			problems = append(problems, cp...)
		}
	}
	return failures(problems, "echo requests from outside unanswered: %s; %s", describeExps(exps), control)
}

func (s *suite) checkDenyDNAT(ctx context.Context) outcome {
	if err := s.ready("a1", "a2"); err != nil {
		return fail("%v", err)
	}
	a1 := s.member("a1")
	from, to := s.port(portDNAT), s.port(portDeny)
	r, err := a1.dnat(ctx, from, to)
	if err != nil {
		return fail("installing the DNAT rule inside a1: %v", err)
	}
	if !r.OK {
		if r.Denied {
			return unsupported("root inside the instance cannot add a DNAT rule (%s): the instance has no CAP_NET_ADMIN over its network namespace, so the Docker case cannot arise; the provider's own integration test covers it from the host side", r.Err)
		}
		return fail("installing the DNAT rule inside a1: %s", r.Err)
	}
	defer a1.dnat(context.WithoutCancel(ctx), 0, 0)
	exps := []expectation{
		{from: s.host(), to: a1, proto: "tcp", port: from, want: false},
		// Control: the published port works, for a peer that may reach it.
		{from: s.from("a2"), to: a1, proto: "tcp", port: from, want: true},
	}
	if ph, ok := s.probeHost(); ok {
		exps = append(exps, expectation{from: ph, to: a1, proto: "tcp", port: from, want: false})
	}
	problems := s.verify(ctx, 0, exps...)
	if r, err := a1.dnat(ctx, 0, 0); err != nil || !r.OK {
		problems = append(problems, fmt.Sprintf("removing the DNAT rule: %v %s", err, r.Err))
	}
	return failures(problems, "port %d published by DNAT inside a1 to its listener on %d: reachable by its cluster peer, not from outside", from, to)
}

func (s *suite) checkEgress(ctx context.Context) outcome {
	if s.phErr != nil {
		return s.probeHostMissing()
	}
	ms, problems := s.readyMembers()
	var (
		ln    probe.ListenNet = probe.LocalListen{}
		addr                  = s.callerAddr
		where                 = "this host (" + addr.String() + ")"
	)
	if s.ph != nil {
		ln, addr, where = s.ph, s.ph.Addr(), "a probe host ("+s.ph.Addr().String()+")"
	}
	var l *probe.Listeners
	var port uint16
	var err error
	for range 10 {
		port = uint16(20000 + rand.IntN(40000))
		if l, err = probe.Listen(ctx, ln, []string{addr.String()}, []uint16{port}, []uint16{port}, s.token); err == nil {
			break
		}
	}
	if err != nil {
		return fail("listening on %s: %v", where, err)
	}
	defer l.Close()
	targets := []probe.Target{{Proto: "tcp", Addr: addr, Port: port}, {Proto: "udp", Addr: addr, Port: port}}
	reached := 0
	for _, m := range ms {
		res, err := m.dial(ctx, targets, s.token, probeTimeout)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		ok := true
		for _, r := range res {
			if !r.Open || !r.Verified {
				ok = false
				problems = append(problems, fmt.Sprintf("%s → %s: not reached (%s%s)", m.key, r.Target, r.Detail, r.Err))
			}
		}
		if ok {
			reached++
		}
	}
	if len(l.Accepted()) < reached {
		problems = append(problems, fmt.Sprintf("the listener saw %d TCP connections for %d instances", len(l.Accepted()), reached))
	}
	if len(problems) > 0 && s.ph == nil && reached == 0 {
		return skip("no instance reached a listener on %s, and the provider offers no probe host to listen elsewhere (this host may be behind NAT): %s", where, strings.Join(problems, "; "))
	}
	return failures(problems, "%d instances reached a tcp and udp listener on %s port %d", reached, where, port)
}

// ruleWait is how long a rule change may take to show.
func (s *suite) ruleWait() time.Duration { return s.feats.RuleChangeLatency + 5*time.Second }
