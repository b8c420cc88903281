package conformance_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance"
	"github.com/compute-sdk/compute/provider/local"
	"golang.org/x/sys/unix"
)

// skipOrFail skips with why, or fails when COMPUTE_REQUIRE_INTEGRATION=1
// (CI), where a missing privilege must not pass silently.
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// newLocal opens a local provider with its own state root, name prefix and
// address pool, so it never touches another test's objects.
func newLocal(t *testing.T, prefix, pool string) *local.Provider {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root: the local provider creates network namespaces, nftables rules and containers")
	}
	lockPrefix(t, prefix)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	p, err := local.New(t.Context(), local.Config{
		Root:          root,
		Prefix:        prefix,
		Pool:          netip.MustParsePrefix(pool),
		MasterKeyFile: filepath.Join(dir, "master.key"), // never the host's own key
		Logger:        slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if errors.Is(err, compute.ErrPrecondition) {
		skipOrFail(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	// The root is new, so any kernel object with this prefix is a leftover
	// of an earlier run that crashed or failed to clean up: sweep it so it
	// cannot change what this run observes.
	if rep, err := p.GC(t.Context()); err != nil {
		t.Fatalf("GC before the run: %v", err)
	} else if len(rep.Removed) > 0 {
		t.Logf("GC removed leftovers of an earlier run: %v", rep.Removed)
	}
	t.Cleanup(func() {
		// Teardown removes the router, host link and cgroup directories
		// the provider shares between instances (the suite made them);
		// it refuses while any instance or cluster is left.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.Teardown(ctx); err != nil {
			t.Errorf("teardown: %v", err)
		}
		// The provider bind-mounts its instances directory (it outlives
		// the Provider value); undo it so the temporary root can go.
		if err := unix.Unmount(filepath.Join(root, "instances"), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			t.Errorf("unmount the provider's instances directory: %v", err)
		}
	})
	return p
}

// lockPrefix serialises test processes that use the same prefix and pool
// (two `go test` runs of this package at once): they would share the router
// namespace and addresses, and the GC below would sweep the other's
// instances. The lock is released when the test ends.
func lockPrefix(t *testing.T, prefix string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "compute-conformance-"+prefix+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Logf("another test process uses prefix %q; waiting for it", prefix)
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// The local provider exposes its backing store, so encryption/at-rest
// scans the raw bytes rather than only reading Features.
var _ conformance.RawDiskReader = (*local.Provider)(nil)

// TestLocal runs the whole suite against the local provider.
func TestLocal(t *testing.T) {
	p := newLocal(t, "cf", "10.231.0.0/16")
	conformance.Run(t, p, conformance.Options{})
}

// plaintextDisk lies: it passes off the instance's decrypted view of its
// /var/tmp (the overlay the instance sees, <root>/instances/<id>/rootfs) as
// its raw disk, as a provider without encryption would.
type plaintextDisk struct{ *local.Provider }

func (p plaintextDisk) ReadRawDisk(ctx context.Context, id string, fn func(io.Reader) error) error {
	dir := filepath.Join(p.Config().Root, "instances", id, "rootfs", "var", "tmp")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var rs []io.Reader
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		defer f.Close()
		rs = append(rs, f)
	}
	return fn(io.MultiReader(rs...))
}

// dropRevokes lies: RevokeRule reports success and changes nothing.
type dropRevokes struct{ *local.Provider }

func (dropRevokes) RevokeRule(ctx context.Context, id string) error { return nil }

// aliasClusters lies: instances asked for the second cluster created are
// put in the first, and reported as members of the one asked for.
type aliasClusters struct {
	*local.Provider
	clusters []string
}

func (a *aliasClusters) CreateCluster(ctx context.Context, spec compute.ClusterSpec) (*compute.Cluster, error) {
	c, err := a.Provider.CreateCluster(ctx, spec)
	if err == nil {
		a.clusters = append(a.clusters, spec.Name)
	}
	return c, err
}

func (a *aliasClusters) CreateInstance(ctx context.Context, spec compute.InstanceSpec) (*compute.Instance, error) {
	asked := spec.Cluster
	if len(a.clusters) >= 2 && spec.Cluster == a.clusters[1] {
		spec.Cluster = a.clusters[0]
	}
	inst, err := a.Provider.CreateInstance(ctx, spec)
	if inst != nil {
		inst.Cluster = asked
	}
	return inst, err
}

// TestBrokenProvider shows the suite catches what it claims: a provider
// that lies about revokes fails rule/revoke, one that merges two clusters
// fails cluster/isolation, one whose disk holds plaintext fails
// encryption/at-rest.
func TestBrokenProvider(t *testing.T) {
	p := newLocal(t, "cb", "10.230.0.0/16")
	for _, tc := range []struct {
		name   string
		p      compute.Provider
		check  string
		reason string // a fragment the failure must name
	}{
		{"drop-revokes", dropRevokes{p}, conformance.CheckRuleRevoke, "after revoking"},
		{"alias-clusters", &aliasClusters{Provider: p}, conformance.CheckClusterIsolation, "b1 → a1"},
		{"plaintext-disk", plaintextDisk{p}, conformance.CheckEncryptionAtRest, "in plaintext"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := conformance.Check(t.Context(), tc.p, conformance.Options{
				Only:   []string{tc.check},
				Logger: slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
			})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			res, ok := rep.Result(tc.check)
			if !ok {
				t.Fatalf("%s did not run: %+v", tc.check, rep.Results)
			}
			if res.Status != conformance.StatusFail || !strings.Contains(res.Reason, tc.reason) {
				t.Fatalf("%s = %s (%s); want a failure naming %q", tc.check, res.Status, res.Reason, tc.reason)
			}
			t.Logf("%s failed as it must: %s", tc.check, res.Reason)
			if len(rep.Results) != 1 {
				t.Errorf("Only ran %d checks, want 1", len(rep.Results))
			}
		})
	}
}

// TestCancelledRunCleansUp cancels a run in the middle of its checks: the
// run says it was interrupted and still removes everything it created.
func TestCancelledRunCleansUp(t *testing.T) {
	p := newLocal(t, "cb", "10.230.0.0/16")
	before, err := p.Inventory(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	rep, err := conformance.Check(ctx, p, conformance.Options{
		Only: []string{"rule/"},
		Progress: func(step string) {
			if step == conformance.CheckRuleRevoke {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Check after cancel: %v, want context.Canceled", err)
	}
	if r, _ := rep.Result(conformance.CheckRuleSet); r.Status != conformance.StatusFail || !strings.Contains(r.Reason, "not run") {
		t.Errorf("a check after the cancel: %+v, want failed as not run", r)
	}
	insts, err := p.ListInstances(t.Context(), compute.ListOptions{})
	if err != nil || len(insts) > 0 {
		t.Errorf("instances left after a cancelled run: %v (%v)", insts, err)
	}
	clusters, err := p.ListClusters(t.Context())
	if err != nil || len(clusters) > 0 {
		t.Errorf("clusters left after a cancelled run: %v (%v)", clusters, err)
	}
	after, err := p.Inventory(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if extra := without(after, before); len(extra) > 0 {
		t.Errorf("left behind after a cancelled run: %v", extra)
	}
}

func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
