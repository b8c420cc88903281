package local

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

// createToSSH creates an instance with SSH open to the host and returns how
// long it took until an SSH login (verifying the reported host key) ran a
// command. The instance is terminated afterwards, untimed.
func createToSSH(b *testing.B, p *Provider, name string, key testKey) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hostCIDR, _ := p.CallerPrefixes(ctx)
	start := time.Now()
	inst, err := p.CreateInstance(ctx, compute.InstanceSpec{Name: name, SSHKeys: []string{key.auth},
		Rules: []compute.RuleSpec{{Protocol: compute.ProtocolTCP, Ports: compute.Port(22), SourceCIDRs: hostCIDR}}})
	if err != nil {
		b.Fatal(err)
	}
	for {
		if c, err := dialSSH(inst, "root", key); err == nil {
			_, err = runErr(c, "true")
			c.Close()
			if err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			b.Fatalf("%s never became reachable: %s", name, consoleTail(p, inst.ID))
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := time.Since(start)
	if err := p.TerminateInstance(context.Background(), inst.ID); err != nil {
		b.Fatal(err)
	}
	return d
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1)+0.5)]
}

// BenchmarkCreateToSSH measures create-to-SSH-ready, with and without user
// namespaces (private users), interleaved so both see the same machine.
func BenchmarkCreateToSSH(b *testing.B) {
	withUserns := newTestProvider(b)
	noUserns := newTestProvider(b, func(c *Config) { c.noPrivateUsers = true })
	key := newTestKey(b)
	modes := []struct {
		name string
		p    *Provider
	}{{"userns", withUserns}, {"nouserns", noUserns}}
	times := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, m := range modes {
			times[m.name] = append(times[m.name], createToSSH(b, m.p, fmt.Sprintf("b%s%d", m.name, i), key))
		}
	}
	b.StopTimer()
	for _, m := range modes {
		b.ReportMetric(percentile(times[m.name], 0.5).Seconds(), "s-p50-"+m.name)
		b.ReportMetric(percentile(times[m.name], 0.9).Seconds(), "s-p90-"+m.name)
	}
}

// BenchmarkCreate10Parallel measures how long ten concurrent creates take
// until all ten accept SSH logins.
func BenchmarkCreate10Parallel(b *testing.B) {
	p := newTestProvider(b)
	key := newTestKey(b)
	var walls, each []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for j := 0; j < 10; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := createToSSH(b, p, fmt.Sprintf("par%d-%d", i, j), key)
				mu.Lock()
				each = append(each, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
		// The wall time is the slowest create-to-SSH (terminates are
		// not part of it).
		var max time.Duration
		for _, d := range each[len(each)-10:] {
			max = maxDur(max, d)
		}
		walls = append(walls, max)
	}
	b.StopTimer()
	b.ReportMetric(percentile(walls, 0.5).Seconds(), "s-all10-p50")
	b.ReportMetric(percentile(each, 0.5).Seconds(), "s-each-p50")
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}
