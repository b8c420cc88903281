// Package conformance proves a provider meets compute's security model from
// the outside: it creates instances and clusters, probes them over the
// network the way an attacker or an auditor would, and compares what it
// observes with what package policy says the firewall must allow.
//
// Providers run it from their tests with Run; computectl verify runs it
// with Check and prints the Report. Both create everything they need (two
// clusters, A with two members and B with one, and one instance outside any
// cluster) and delete it again, even when a check fails or the context is
// cancelled.
//
// Expected reachability is never written by hand: every probe's expected
// outcome is policy.Effective(...).Allows(...) for the rules the suite
// asked for, so a probe passes only when observed equals predicted. The
// suite also checks that the prediction matches the security model's intent
// (a default-deny probe must be predicted closed), so a policy bug cannot
// make a check pass.
//
// Vantage points: the test process itself, whose traffic instances see from
// the provider's caller prefixes (compute.CallerPrefixer, or
// Options.CallerPrefixes), and a probe host when the provider implements
// compute.ProbeHoster. Inside instances the suite runs a probe program: the
// running binary itself, copied over SSH and started with
// COMPUTE_CONFORMANCE_PROBE=1, which this package's init turns into the
// probe (so any binary that imports conformance can serve as the probe; the
// instance must be able to run it, which holds for Linux instances of the
// same architecture).
package conformance

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

// Check names, in the order the suite reports them.
const (
	CheckSSHLogin            = "ssh/login"
	CheckSSHHostKey          = "ssh/host-key"
	CheckSSHNoPassword       = "ssh/no-password"
	CheckSSHAlgorithms       = "ssh/algorithms"
	CheckSystemdRunning      = "systemd/running"
	CheckDenyTCP             = "deny/tcp"
	CheckDenyUDP             = "deny/udp"
	CheckDenyICMP            = "deny/icmp"
	CheckDenySSHClosed       = "deny/ssh-closed"
	CheckDenyDNAT            = "deny/dnat"
	CheckEgress              = "egress"
	CheckRuleOpensExactly    = "rule/opens-exactly"
	CheckRuleOtherSource     = "rule/other-source"
	CheckRuleRevoke          = "rule/revoke"
	CheckRuleSet             = "rule/set"
	CheckRuleSetIdempotent   = "rule/set-idempotent"
	CheckClusterPeers        = "cluster/peers"
	CheckClusterIsolation    = "cluster/isolation"
	CheckClusterCrossRule    = "cluster/cross-rule"
	CheckEncryptionAtRest    = "encryption/at-rest"
	CheckEncryptionInTransit = "encryption/in-transit"
	CheckTeardownUnreachable = "teardown/unreachable"
	CheckTeardownNoLeaks     = "teardown/no-leaks"
)

var checkNames = []string{
	CheckSSHLogin, CheckSSHHostKey, CheckSSHNoPassword, CheckSSHAlgorithms,
	CheckSystemdRunning,
	CheckDenyTCP, CheckDenyUDP, CheckDenyICMP, CheckDenySSHClosed, CheckDenyDNAT,
	CheckEgress,
	CheckRuleOpensExactly, CheckRuleOtherSource, CheckRuleRevoke, CheckRuleSet, CheckRuleSetIdempotent,
	CheckClusterPeers, CheckClusterIsolation, CheckClusterCrossRule,
	CheckEncryptionAtRest, CheckEncryptionInTransit,
	CheckTeardownUnreachable, CheckTeardownNoLeaks,
}

// CheckNames returns every check name in report order.
func CheckNames() []string { return slices.Clone(checkNames) }

// Options tune a run. The zero value runs every check with the provider's
// default image and type.
type Options struct {
	// Logger receives progress at Info and probe details at Debug; nil
	// discards.
	Logger *slog.Logger
	// Image and Type are passed to every instance the suite creates.
	Image, Type string
	// Only, when set, runs the checks whose names start with one of these
	// prefixes ("rule/" or "deny/tcp"). Setup and cleanup always run.
	Only []string
	// Timeout bounds the whole run, cleanup excepted (default 15 minutes).
	Timeout time.Duration
	// CallerPrefixes are the source addresses instances see for traffic
	// from this process. Default: the provider's CallerPrefixes
	// (compute.CallerPrefixer). Without either the suite cannot open SSH to
	// the caller alone, and Check fails.
	CallerPrefixes []netip.Prefix
	// Progress, when set, is called with each step as it starts: setup
	// phases ("creating instances") and check names. For progress displays;
	// it must not block.
	Progress func(step string)
}

// Statuses of a Result.
const (
	StatusPass = "pass"
	StatusFail = "fail"
	StatusSkip = "skip"
)

// Result is the outcome of one check.
type Result struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	// Reason says why a check failed or was skipped, or what a pass
	// covered.
	Reason string `json:"reason,omitempty"`
	// Duration is in nanoseconds in JSON.
	Duration time.Duration `json:"duration"`

	// unsupported marks a skip the provider declares: it lacks the
	// optional interface or the feature does not apply to it. Other skips
	// are failures under COMPUTE_REQUIRE_INTEGRATION=1.
	unsupported bool
}

// Report is the outcome of a run.
type Report struct {
	Provider string        `json:"provider"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
	Results  []Result      `json:"results"`
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool {
	for _, res := range r.Results {
		if res.Status == StatusFail {
			return true
		}
	}
	return false
}

// Result returns the result of the named check, if it ran.
func (r *Report) Result(name string) (Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return Result{}, false
}

// RawDiskReader is implemented by providers that can expose the raw bytes
// backing an instance's disk as stored on the host (local: the encrypted
// filesystem image). encryption/at-rest then writes a marker inside the
// instance and checks it is absent from those bytes.
type RawDiskReader interface {
	ReadRawDisk(ctx context.Context, id string, fn func(r io.Reader) error) error
}

// HTTPClientProvider is implemented by providers that speak HTTPS: it
// returns every HTTP client they use, and encryption/in-transit checks each
// refuses a server that offers nothing newer than TLS 1.1.
type HTTPClientProvider interface {
	HTTPClients() []*http.Client
}

// Check runs the suite against p and returns its report. A check failing is
// not an error: read the report. The error is set when the suite could not
// run at all (bad options, no way to reach instances, setup failed); the
// report then says which checks did not run.
func Check(ctx context.Context, p compute.Provider, opts Options) (*Report, error) {
	return run(ctx, p, opts, nil)
}

// Run runs the suite against p, each check as a subtest named after it
// (t.Run("ssh/login", ...)), reported as the check finishes. A skip is
// t.Skip with its reason, except that with COMPUTE_REQUIRE_INTEGRATION=1
// only skips the provider declares (an optional interface it lacks, a
// feature that does not apply) stay skips; any other skip fails.
//
// A provider's test is one call:
//
//	func TestConformance(t *testing.T) {
//		p := newProvider(t) // its own state, name prefix and address pool
//		conformance.Run(t, p, conformance.Options{})
//	}
func Run(t *testing.T, p compute.Provider, opts Options) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	results := make(chan Result)
	type done struct {
		rep *Report
		err error
	}
	fin := make(chan done, 1)
	go func() {
		rep, err := run(t.Context(), p, opts, func(r Result) { results <- r })
		close(results)
		fin <- done{rep, err}
	}()
	require := os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1"
	for r := range results {
		t.Run(r.Name, func(t *testing.T) {
			switch r.Status {
			case StatusPass:
				t.Log(r.Reason)
			case StatusFail:
				t.Error(r.Reason)
			case StatusSkip:
				if require && !r.unsupported {
					t.Errorf("skipped, but COMPUTE_REQUIRE_INTEGRATION=1: %s", r.Reason)
					return
				}
				t.Skip(r.Reason)
			}
		})
	}
	d := <-fin
	if d.err != nil {
		t.Errorf("conformance: %v", d.err)
	}
	if d.rep != nil {
		var b strings.Builder
		d.rep.WriteTable(&b)
		t.Logf("conformance report:\n%s", b.String())
	}
}

// testWriter sends log lines to t.Log so they appear with the test.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
