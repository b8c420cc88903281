package conformance

import (
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance/internal/probe"
	"golang.org/x/crypto/ssh"
)

const (
	// probeTimeout is how long one probe waits for an answer. Filtered
	// ports drop rather than refuse, so every closed probe costs this.
	probeTimeout = 2 * time.Second
	// cleanupTimeout bounds cleanup, which runs on a context of its own.
	cleanupTimeout = 5 * time.Minute
	// runLabel carries the run ID on everything the suite creates.
	runLabel = "compute-conformance-run"
)

// Port offsets from the run's random base. Every listener binds base+0 ..
// base+portCount-1 on TCP and UDP; each check uses its own ports so one
// check's rules never explain another check's observations.
const (
	portDeny      = iota // deny/tcp, deny/udp, and the DNAT target
	portExact            // rule/opens-exactly: P
	portExactNext        // P+1, must stay closed
	portOther            // rule/other-source
	portRevoke           // rule/revoke
	portSetA             // rule/set, removed by the second set
	portSetB             // rule/set, added by the second set
	portPeer             // cluster/peers and cluster/isolation
	portCross            // cluster/cross-rule: R
	portCrossNext        // R+1, must stay closed
	portCount
	portDNAT = portCount // published by the DNAT rule; nothing listens on it
)

// member is one instance the suite created.
type member struct {
	key     string // "a1", "a2", "b1", "l1"
	cluster string // the cluster the suite asked for ("" for l1)
	inst    *compute.Instance
	addr    netip.Addr // IPv4 address used for probes
	addr6   netip.Addr // IPv6 address, when the instance has one

	ssh       *ssh.Client
	sshErr    error
	probePath string
	probeErr  error
	listener  *remoteListener
	listenErr error
}

type suite struct {
	p     compute.Provider
	opts  Options
	log   *slog.Logger
	fw    compute.FirewallManager
	feats compute.Features
	emit  func(Result)

	runID string
	token string
	base  uint16

	caller     []netip.Prefix
	callerAddr netip.Addr

	signers [2]ssh.Signer
	pubKeys [2]string

	ph    compute.ProbeHost
	phErr error // set when the provider has ProbeHoster but attaching failed

	clusterA, clusterB string
	clusters           []string // created, for cleanup
	members            []*member
	created            []string // instance IDs, for cleanup
	invBefore          []string
	invErr             error

	mu      sync.Mutex
	rules   map[string]compute.FirewallRule // what the suite asked for, by ID
	results map[string]Result
	// tornDown is set once the teardown phase removed everything.
	tornDown bool
}

func run(ctx context.Context, p compute.Provider, opts Options, emit func(Result)) (*Report, error) {
	for _, o := range opts.Only {
		if !slices.ContainsFunc(checkNames, func(n string) bool { return strings.HasPrefix(n, o) }) {
			return nil, compute.InvalidField("only", o, "matches no check name")
		}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 15 * time.Minute
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &suite{
		p:       p,
		opts:    opts,
		log:     log,
		emit:    emit,
		runID:   randHex(3),
		token:   probe.NewToken(),
		base:    uint16(20000 + rand.IntN(40000)),
		rules:   map[string]compute.FirewallRule{},
		results: map[string]Result{},
	}
	s.clusterA, s.clusterB = "cf-"+s.runID+"-a", "cf-"+s.runID+"-b"
	s.fw, _ = p.(compute.FirewallManager)
	if fr, ok := p.(compute.FeatureReporter); ok {
		s.feats = fr.Features()
	}
	rep := &Report{Provider: p.Name(), Started: time.Now()}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	err := s.runAll(ctx)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("run interrupted: %w", context.Cause(ctx))
	}
	s.finish(err)

	for _, n := range checkNames {
		if r, ok := s.results[n]; ok {
			rep.Results = append(rep.Results, r)
		}
	}
	rep.Duration = time.Since(rep.Started)
	return rep, err
}

// abbreviate keeps the first line of s, at most n bytes of it.
func abbreviate(s string, n int) string {
	s, _, cut := strings.Cut(s, "\n")
	if len(s) > n {
		s, cut = s[:n], true
	}
	if cut {
		s += " ..."
	}
	return s
}

func randHex(n int) string {
	b := make([]byte, n)
	crand.Read(b)
	return hex.EncodeToString(b)
}

func (s *suite) selected(name string) bool {
	if len(s.opts.Only) == 0 {
		return true
	}
	return slices.ContainsFunc(s.opts.Only, func(o string) bool { return strings.HasPrefix(name, o) })
}

// outcome is what a check function returns.
type outcome struct {
	status      string
	reason      string
	unsupported bool
}

func pass(format string, args ...any) outcome {
	return outcome{status: StatusPass, reason: fmt.Sprintf(format, args...)}
}

func fail(format string, args ...any) outcome {
	return outcome{status: StatusFail, reason: fmt.Sprintf(format, args...)}
}

// unsupported is a skip the provider declares by what it implements.
func unsupported(format string, args ...any) outcome {
	return outcome{status: StatusSkip, reason: fmt.Sprintf(format, args...), unsupported: true}
}

// skip is a skip the environment caused; it fails under
// COMPUTE_REQUIRE_INTEGRATION=1.
func skip(format string, args ...any) outcome {
	return outcome{status: StatusSkip, reason: fmt.Sprintf(format, args...)}
}

// failures turns a list of problems into an outcome.
func failures(problems []string, passReason string, args ...any) outcome {
	if len(problems) == 0 {
		return pass(passReason, args...)
	}
	return fail("%s", strings.Join(problems, "; "))
}

// check runs fn as the named check if it is selected, and records it.
func (s *suite) check(ctx context.Context, name string, fn func(ctx context.Context) outcome) {
	if !s.selected(name) {
		return
	}
	if _, done := s.results[name]; done {
		return
	}
	start := time.Now()
	var o outcome
	if ctx.Err() != nil {
		o = fail("not run: %v", context.Cause(ctx))
	} else {
		s.step(name)
		func() {
			defer func() {
				if r := recover(); r != nil {
					o = fail("panic: %v\n%s", r, debug.Stack())
				}
			}()
			o = fn(ctx)
		}()
	}
	s.record(Result{Name: name, Status: o.status, Reason: o.reason, Duration: time.Since(start), unsupported: o.unsupported})
}

// step reports progress.
func (s *suite) step(what string) {
	s.log.Info("conformance: " + what)
	if s.opts.Progress != nil {
		s.opts.Progress(what)
	}
}

func (s *suite) record(r Result) {
	s.results[r.Name] = r
	s.log.Info("conformance: result", "check", r.Name, "status", r.Status, "reason", r.Reason, "duration", r.Duration.Round(time.Millisecond))
	if s.emit != nil {
		s.emit(r)
	}
}

// finish records every selected check that did not run.
func (s *suite) finish(err error) {
	for _, n := range checkNames {
		if _, ok := s.results[n]; ok || !s.selected(n) {
			continue
		}
		reason := "not run"
		if err != nil {
			reason = "not run: " + abbreviate(err.Error(), 240)
		}
		s.record(Result{Name: n, Status: StatusFail, Reason: reason})
	}
}

// runAll is the whole suite: setup, checks in an order that lets later
// checks reuse what earlier ones built, teardown.
func (s *suite) runAll(ctx context.Context) error {
	defer s.cleanup()
	if err := s.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}

	// Port 22 must be closed before the suite's explicit rule opens it.
	s.check(ctx, CheckDenySSHClosed, s.checkSSHClosed)
	if err := s.openSSH(ctx); err != nil {
		return fmt.Errorf("opening SSH to the suite's instances: %w", err)
	}
	s.check(ctx, CheckSSHLogin, s.checkSSHLogin)
	s.check(ctx, CheckSSHHostKey, s.checkSSHHostKey)
	s.check(ctx, CheckSSHNoPassword, s.checkSSHNoPassword)
	s.check(ctx, CheckSSHAlgorithms, s.checkSSHAlgorithms)
	s.check(ctx, CheckSystemdRunning, s.checkSystemd)

	s.startProbes(ctx)
	s.check(ctx, CheckDenyTCP, s.checkDenyTCP)
	s.check(ctx, CheckDenyUDP, s.checkDenyUDP)
	s.check(ctx, CheckDenyICMP, s.checkDenyICMP)
	s.check(ctx, CheckDenyDNAT, s.checkDenyDNAT)
	s.check(ctx, CheckEgress, s.checkEgress)
	s.check(ctx, CheckRuleOpensExactly, s.checkRuleOpensExactly)
	s.check(ctx, CheckRuleOtherSource, s.checkRuleOtherSource)
	s.check(ctx, CheckRuleRevoke, s.checkRuleRevoke)
	s.check(ctx, CheckRuleSet, s.checkRuleSet)
	s.check(ctx, CheckRuleSetIdempotent, s.checkRuleSetIdempotent)
	s.check(ctx, CheckClusterPeers, s.checkClusterPeers)
	s.check(ctx, CheckClusterIsolation, s.checkClusterIsolation)
	s.check(ctx, CheckClusterCrossRule, s.checkClusterCrossRule)
	s.check(ctx, CheckEncryptionAtRest, s.checkEncryptionAtRest)
	s.check(ctx, CheckEncryptionInTransit, s.checkEncryptionInTransit)

	s.teardown(ctx)
	return nil
}

// setup creates the fixture: two clusters, four instances, a probe host.
func (s *suite) setup(ctx context.Context) error {
	s.caller = s.opts.CallerPrefixes
	if len(s.caller) == 0 {
		cp, ok := s.p.(compute.CallerPrefixer)
		if !ok {
			return fmt.Errorf("%w: provider %s does not report the caller's source prefixes (compute.CallerPrefixer); set Options.CallerPrefixes", compute.ErrUnsupported, s.p.Name())
		}
		var err error
		if s.caller, err = cp.CallerPrefixes(ctx); err != nil {
			return fmt.Errorf("caller prefixes: %w", err)
		}
	}
	for _, pfx := range s.caller {
		if pfx.Addr().Is4() {
			s.callerAddr = pfx.Addr()
			break
		}
	}
	if !s.callerAddr.IsValid() {
		return fmt.Errorf("no IPv4 caller prefix in %v", s.caller)
	}
	if inv, ok := s.p.(compute.Inventorier); ok {
		s.invBefore, s.invErr = inv.Inventory(ctx)
	}
	for i := range s.signers {
		pub, priv, err := ed25519.GenerateKey(nil)
		if err != nil {
			return err
		}
		if s.signers[i], err = ssh.NewSignerFromKey(priv); err != nil {
			return err
		}
		sp, err := ssh.NewPublicKey(pub)
		if err != nil {
			return err
		}
		s.pubKeys[i] = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + fmt.Sprintf(" conformance-%s-key%d", s.runID, i+1)
	}
	if ph, ok := s.p.(compute.ProbeHoster); ok {
		s.ph, s.phErr = ph.AttachProbeHost(ctx, "cf"+s.runID[:4])
		if s.phErr != nil {
			s.log.Warn("conformance: attaching a probe host failed", "err", s.phErr)
		}
	}

	labels := map[string]string{runLabel: s.runID}
	for _, c := range []string{s.clusterA, s.clusterB} {
		if _, err := s.p.CreateCluster(ctx, compute.ClusterSpec{Name: c, Labels: labels}); err != nil {
			return fmt.Errorf("create cluster %s: %w", c, err)
		}
		s.clusters = append(s.clusters, c)
	}
	s.members = []*member{
		{key: "a1", cluster: s.clusterA},
		{key: "a2", cluster: s.clusterA},
		{key: "b1", cluster: s.clusterB},
		{key: "l1"},
	}
	s.step("creating clusters " + s.clusterA + ", " + s.clusterB + " and 4 instances")
	errs := make([]error, len(s.members))
	var wg sync.WaitGroup
	for i, m := range s.members {
		wg.Go(func() { errs[i] = s.createMember(ctx, m, labels) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *suite) createMember(ctx context.Context, m *member, labels map[string]string) error {
	spec := compute.InstanceSpec{
		Name:    "cf-" + s.runID + "-" + m.key,
		RefID:   "conformance-" + s.runID + "-" + m.key,
		Cluster: m.cluster,
		Image:   s.opts.Image,
		Type:    s.opts.Type,
		SSHKeys: s.pubKeys[:],
		Labels:  labels,
	}
	if s.fw == nil {
		// Create-time rules are all a provider without FirewallManager
		// has; SSH from the caller must be there from the start.
		spec.Rules = []compute.RuleSpec{s.sshRule()}
	}
	inst, err := s.p.CreateInstance(ctx, spec)
	if err != nil {
		return fmt.Errorf("create instance %s: %w", m.key, err)
	}
	s.mu.Lock()
	s.created = append(s.created, inst.ID)
	s.mu.Unlock()
	if s.fw == nil {
		s.modelAdd(compute.InstanceTarget(inst.ID), spec.Rules...)
	}
	inst, err = compute.Wait(ctx, s.p, inst.ID, compute.StatusRunning)
	if err != nil {
		return fmt.Errorf("instance %s: %w", m.key, err)
	}
	m.inst = inst
	for _, a := range inst.Addresses {
		switch {
		case a.Is4() && !m.addr.IsValid():
			m.addr = a
		case a.Is6() && !a.IsLinkLocalUnicast() && !m.addr6.IsValid():
			m.addr6 = a
		}
	}
	if !m.addr.IsValid() {
		if a, err := netip.ParseAddr(inst.SSH.Host); err == nil && a.Is4() {
			m.addr = a
		}
	}
	if !m.addr.IsValid() {
		return fmt.Errorf("instance %s has no IPv4 address (addresses %v, ssh host %q)", m.key, inst.Addresses, inst.SSH.Host)
	}
	s.log.Info("conformance: instance running", "member", m.key, "id", inst.ID, "addr", m.addr, "cluster", m.cluster)
	return nil
}

func (s *suite) member(key string) *member {
	for _, m := range s.members {
		if m.key == key {
			return m
		}
	}
	panic("conformance: no member " + key)
}

func (s *suite) sshRule() compute.RuleSpec {
	return compute.RuleSpec{
		Protocol:    compute.ProtocolTCP,
		Ports:       compute.Port(22),
		SourceCIDRs: s.caller,
		Description: "conformance: ssh from the caller",
	}
}

// sshTargets are where the suite's SSH rules go: each cluster, and the
// lone instance.
func (s *suite) sshTargets() []compute.Target {
	return []compute.Target{
		compute.ClusterTarget(s.clusterA),
		compute.ClusterTarget(s.clusterB),
		compute.InstanceTarget(s.member("l1").inst.ID),
	}
}

// openSSH adds the explicit SSH rules, connects to every member and
// installs the probe program.
func (s *suite) openSSH(ctx context.Context) error {
	if s.fw != nil {
		for _, t := range s.sshTargets() {
			if _, err := s.addRule(ctx, t, s.sshRule()); err != nil {
				return err
			}
		}
	}
	s.step("connecting over SSH and copying the probe program")
	deadline := 2*time.Minute + s.feats.RuleChangeLatency
	var wg sync.WaitGroup
	for _, m := range s.members {
		wg.Go(func() {
			m.ssh, m.sshErr = s.connect(ctx, m, deadline, s.signers[0])
			if m.sshErr != nil {
				s.log.Warn("conformance: ssh failed", "member", m.key, "err", m.sshErr)
				return
			}
			m.probeErr = m.installProbe(ctx, s.runID)
		})
	}
	wg.Wait()
	var errs []error
	for _, m := range s.members {
		if m.sshErr != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.key, m.sshErr))
		}
	}
	return errors.Join(errs...)
}

// connect retries SSH until it works or within expires: sshd may still be
// starting and a rule may take time to apply.
func (s *suite) connect(ctx context.Context, m *member, within time.Duration, signer ssh.Signer) (*ssh.Client, error) {
	cfg, err := sshConfig(m.inst, ssh.PublicKeys(signer))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := dialSSH(actx, m.inst.SSH.Addr(), cfg)
		acancel()
		if err == nil {
			return c, nil
		}
		last = err
		// A host key mismatch or refused key will not fix itself.
		var nm *ssh.ServerAuthError
		if strings.Contains(err.Error(), "host key") || errors.As(err, &nm) || strings.Contains(err.Error(), "unable to authenticate") {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ssh %s: %w (last error: %v)", m.inst.SSH.Addr(), ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// startProbes starts a listener on every member that has the probe.
func (s *suite) startProbes(ctx context.Context) {
	ports := s.ports()
	var wg sync.WaitGroup
	for _, m := range s.members {
		if m.probePath == "" {
			continue
		}
		wg.Go(func() {
			m.listener, m.listenErr = m.startListener(ctx, ports, ports, s.token)
		})
	}
	wg.Wait()
}

func (s *suite) ports() []uint16 {
	p := make([]uint16, portCount)
	for i := range p {
		p[i] = s.port(i)
	}
	return p
}

func (s *suite) port(offset int) uint16 { return s.base + uint16(offset) }

// ready returns an error unless every given member can run probes.
func (s *suite) ready(keys ...string) error {
	var errs []error
	for _, k := range keys {
		m := s.member(k)
		switch {
		case m.sshErr != nil:
			errs = append(errs, fmt.Errorf("%s: no SSH: %v", k, m.sshErr))
		case m.probeErr != nil:
			errs = append(errs, fmt.Errorf("%s: no probe program: %v", k, m.probeErr))
		case m.ssh == nil:
			errs = append(errs, fmt.Errorf("%s: %w", k, errNoSSH))
		case m.listener == nil:
			errs = append(errs, fmt.Errorf("%s: no listener: %v", k, m.listenErr))
		}
	}
	return errors.Join(errs...)
}

// cleanup deletes whatever the suite created and still exists. It runs on
// a context of its own so a cancelled run still cleans up.
func (s *suite) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for _, m := range s.members {
		if m.listener != nil {
			m.listener.Close()
			m.listener = nil
		}
		if m.ssh != nil {
			if m.probePath != "" {
				m.exec(ctx, "rm -f "+m.probePath, nil)
			}
			m.ssh.Close()
			m.ssh = nil
		}
	}
	if s.tornDown {
		return
	}
	if err := s.removeAll(ctx); err != nil {
		s.log.Error("conformance: cleanup left objects behind", "err", err)
	}
}

// removeAll revokes rules naming the suite's clusters as sources,
// terminates the instances, deletes the clusters and detaches the probe
// host. Objects already gone are fine.
func (s *suite) removeAll(ctx context.Context) error {
	var errs []error
	gone := func(err error) bool { return err == nil || errors.Is(err, compute.ErrNotFound) }
	if s.fw != nil {
		for id, r := range s.modelRules() {
			if len(r.SourceClusters) > 0 {
				if err := s.fw.RevokeRule(ctx, id); !gone(err) {
					errs = append(errs, fmt.Errorf("revoke %s: %w", id, err))
				}
				s.modelRemove(id)
			}
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range s.created {
		wg.Go(func() {
			if err := s.terminate(ctx, id); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, c := range s.clusters {
		if err := s.p.DeleteCluster(ctx, c); !gone(err) {
			errs = append(errs, fmt.Errorf("delete cluster %s: %w", c, err))
		}
	}
	if s.ph != nil {
		if err := s.ph.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach probe host: %w", err))
		}
		s.ph = nil
	}
	return errors.Join(errs...)
}

// terminate terminates id and waits until it is gone.
func (s *suite) terminate(ctx context.Context, id string) error {
	err := s.p.TerminateInstance(ctx, id)
	if errors.Is(err, compute.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("terminate %s: %w", id, err)
	}
	for {
		inst, err := s.p.GetInstance(ctx, id)
		if errors.Is(err, compute.ErrNotFound) || (err == nil && inst.Status == compute.StatusTerminated) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to terminate: %w", id, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
