package probe

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// DNATResult is the line the dnat and undnat modes print.
type DNATResult struct {
	OK bool `json:"ok"`
	// Denied is true when the namespace refused the change (EPERM).
	Denied bool   `json:"denied,omitempty"`
	Err    string `json:"err,omitempty"`
}

// Main runs the probe program: args are the mode and its flags. Every mode
// prints JSON lines on stdout; the exit code is 0 unless the arguments are
// wrong.
//
//	listen -tcp 1,2 -udp 3 -token T [-ttl 15m]
//	    bind on 0.0.0.0 and ::, print a Ready line, serve until stdin
//	    closes (the SSH session ends) or the ttl passes
//	dial -token T [-timeout 2s] TARGET...
//	    probe each target concurrently, print one Result line each
//	dnat -from X -to Y -addr A    install a DNAT rule (see DNAT)
//	undnat                        remove it
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "probe: mode required: listen, dial, dnat, undnat")
		return 2
	}
	enc := json.NewEncoder(stdout)
	fs := flag.NewFlagSet("probe "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	ctx := context.Background()
	switch args[0] {
	case "listen":
		tcpS := fs.String("tcp", "", "TCP ports, comma-separated")
		udpS := fs.String("udp", "", "UDP ports, comma-separated")
		token := fs.String("token", "", "banner/echo token")
		ttl := fs.Duration("ttl", 15*time.Minute, "serve at most this long")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		tcp, err1 := ParsePorts(*tcpS)
		udp, err2 := ParsePorts(*udpS)
		if err := errors.Join(err1, err2); err != nil || *token == "" {
			fmt.Fprintln(stderr, "probe listen: bad flags:", err)
			return 2
		}
		l, err := Listen(ctx, LocalListen{}, []string{"0.0.0.0", "::"}, tcp, udp, *token)
		if err != nil {
			enc.Encode(Ready{Err: err.Error()})
			return 1
		}
		defer l.Close()
		enc.Encode(l.Ready())
		done := make(chan struct{})
		go func() {
			io.Copy(io.Discard, stdin)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(*ttl):
		}
		return 0

	case "dial":
		token := fs.String("token", "", "banner/echo token")
		timeout := fs.Duration("timeout", 2*time.Second, "per-target timeout")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		var targets []Target
		for _, s := range fs.Args() {
			t, err := ParseTarget(s)
			if err != nil {
				fmt.Fprintln(stderr, "probe dial:", err)
				return 2
			}
			targets = append(targets, t)
		}
		for _, r := range All(ctx, Local{}, targets, *token, *timeout) {
			enc.Encode(r)
		}
		return 0

	case "dnat":
		from := fs.Uint("from", 0, "published port")
		to := fs.Uint("to", 0, "listener port")
		addrS := fs.String("addr", "", "listener address (the instance's own)")
		if fs.Parse(args[1:]) != nil {
			return 2
		}
		addr, err := netip.ParseAddr(*addrS)
		if err != nil || *from == 0 || *from > 65535 || *to == 0 || *to > 65535 {
			fmt.Fprintln(stderr, "probe dnat: bad flags")
			return 2
		}
		enc.Encode(dnatResult(DNAT(uint16(*from), uint16(*to), addr)))
		return 0

	case "undnat":
		enc.Encode(dnatResult(RemoveDNAT()))
		return 0
	}
	fmt.Fprintf(stderr, "probe: unknown mode %q\n", args[0])
	return 2
}

func dnatResult(err error) DNATResult {
	if err == nil {
		return DNATResult{OK: true}
	}
	return DNATResult{Denied: errors.Is(err, ErrPermission), Err: err.Error()}
}
