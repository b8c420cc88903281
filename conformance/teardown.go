package conformance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance/internal/probe"
)

// teardown removes everything and checks nothing answers and nothing is
// left. The cleanup that always runs after it then has nothing to do.
func (s *suite) teardown(ctx context.Context) {
	type old struct {
		key  string
		addr string
		ts   []probe.Target
	}
	var olds []old
	for _, m := range s.members {
		if m.inst == nil {
			continue
		}
		olds = append(olds, old{key: m.key, addr: m.addr.String(), ts: []probe.Target{
			{Proto: "tcp", Addr: m.addr, Port: 22},
			{Proto: "tcp", Addr: m.addr, Port: s.port(portDeny)},
			{Proto: "icmp", Addr: m.addr},
		}})
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
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()

	s.step("terminating instances")
	var termErr error
	start := time.Now()
	{
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, id := range s.created {
			wg.Go(func() {
				if err := s.terminate(cctx, id); err != nil {
					mu.Lock()
					termErr = errors.Join(termErr, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	s.log.Info("conformance: instances terminated", "took", time.Since(start).Round(time.Millisecond), "err", termErr)

	s.check(ctx, CheckTeardownUnreachable, func(ctx context.Context) outcome {
		if termErr != nil {
			return fail("terminate: %v", termErr)
		}
		var problems []string
		vantages := []struct {
			name string
			n    probe.Net
		}{{"host", probe.Local{}}}
		if s.ph != nil {
			vantages = append(vantages, struct {
				name string
				n    probe.Net
			}{"probe host", s.ph})
		}
		// Every probe at once: each silent one costs the full timeout.
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, o := range olds {
			for _, v := range vantages {
				wg.Go(func() {
					for _, r := range probe.All(ctx, v.n, o.ts, s.token, probeTimeout) {
						if r.Open {
							mu.Lock()
							problems = append(problems, fmt.Sprintf("%s → old %s address %s: still answers", v.name, o.key, r.Target))
							mu.Unlock()
						}
					}
				})
			}
		}
		wg.Wait()
		sort.Strings(problems)
		return failures(problems, "after terminate, the old addresses of %d instances answer nothing on tcp:22, tcp:%d or icmp", len(olds), s.port(portDeny))
	})

	var removeErr error
	for _, c := range s.clusters {
		if err := s.p.DeleteCluster(cctx, c); err != nil && !errors.Is(err, compute.ErrNotFound) {
			removeErr = errors.Join(removeErr, fmt.Errorf("delete cluster %s: %w", c, err))
		}
	}
	if s.ph != nil {
		if err := s.ph.Close(); err != nil {
			removeErr = errors.Join(removeErr, fmt.Errorf("detach probe host: %w", err))
		}
		s.ph = nil
	}
	s.tornDown = termErr == nil && removeErr == nil

	s.check(ctx, CheckTeardownNoLeaks, func(ctx context.Context) outcome {
		var problems []string
		if termErr != nil {
			problems = append(problems, "terminate: "+termErr.Error())
		}
		if removeErr != nil {
			problems = append(problems, removeErr.Error())
		}
		// Providers may finish deleting in the background; give them a
		// little time before calling it a leak.
		deadline := time.Now().Add(30 * time.Second)
		var leaks []string
		for {
			leaks = s.leaks(ctx)
			if len(leaks) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Second)
		}
		problems = append(problems, leaks...)
		what := "no instance, cluster or rule of the suite is listed"
		if _, ok := s.p.(compute.Inventorier); ok {
			what += ", and the provider's inventory equals the one taken before the suite"
		}
		return failures(problems, "%s", what)
	})
}

// leaks lists what the provider still shows of the suite.
func (s *suite) leaks(ctx context.Context) []string {
	var leaks []string
	insts, err := s.p.ListInstances(ctx, compute.ListOptions{Labels: map[string]string{runLabel: s.runID}})
	if err != nil {
		leaks = append(leaks, "list instances: "+err.Error())
	}
	for _, i := range insts {
		if i.Status != compute.StatusTerminated {
			leaks = append(leaks, fmt.Sprintf("instance %s (%s) is still listed as %s", i.ID, i.Name, i.Status))
		}
	}
	for _, id := range s.created {
		if i, err := s.p.GetInstance(ctx, id); err == nil && i.Status != compute.StatusTerminated {
			leaks = append(leaks, fmt.Sprintf("instance %s is still %s", id, i.Status))
		} else if err != nil && !errors.Is(err, compute.ErrNotFound) {
			leaks = append(leaks, fmt.Sprintf("get instance %s: %v", id, err))
		}
	}
	clusters, err := s.p.ListClusters(ctx)
	if err != nil {
		leaks = append(leaks, "list clusters: "+err.Error())
	}
	for _, c := range clusters {
		if slices.Contains(s.clusters, c.Name) {
			leaks = append(leaks, "cluster "+c.Name+" is still listed")
		}
	}
	if s.fw != nil {
		targets := []compute.Target{compute.ClusterTarget(s.clusterA), compute.ClusterTarget(s.clusterB)}
		for _, id := range s.created {
			targets = append(targets, compute.InstanceTarget(id))
		}
		for _, t := range targets {
			rules, err := s.fw.ListRules(ctx, t)
			if err != nil && !errors.Is(err, compute.ErrNotFound) {
				leaks = append(leaks, fmt.Sprintf("list rules of %s: %v", t, err))
			}
			for _, r := range rules {
				leaks = append(leaks, fmt.Sprintf("rule %s on %s is still listed", r.ID, t))
			}
		}
	}
	if inv, ok := s.p.(compute.Inventorier); ok {
		if s.invErr != nil {
			leaks = append(leaks, "inventory before the suite: "+s.invErr.Error())
		} else if after, err := inv.Inventory(ctx); err != nil {
			leaks = append(leaks, "inventory: "+err.Error())
		} else if extra := without(after, s.invBefore); len(extra) > 0 {
			leaks = append(leaks, "left behind: "+strings.Join(extra, ", "))
		}
	}
	return leaks
}

// without returns the elements of a that are not in b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
