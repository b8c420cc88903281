package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/internal/fake"
	"golang.org/x/crypto/ssh"
)

// testProvider is the registered name of the fake in these tests. The fake
// backing one test is picked by the "key" setting, so tests can run in
// parallel against their own state.
const testProvider = "clitest"

var fakes sync.Map // key -> compute.Provider

func init() {
	compute.Register(testProvider, func(ctx context.Context, cfg any) (compute.Provider, error) {
		m, _ := cfg.(map[string]string)
		p, ok := fakes.Load(m["key"])
		if !ok {
			return nil, fmt.Errorf("no fake %q: %w", m["key"], compute.ErrNotFound)
		}
		return p.(compute.Provider), nil
	})
}

// callerPrefix is what the fake says the calling host is.
var callerPrefix = netip.MustParsePrefix("10.229.255.1/32")

type testEnv struct {
	t     *testing.T
	fake  *fake.Provider
	home  string
	env   map[string]string
	stdin string
	// provider, when set, is what the registry returns instead of fake
	// (e.g. fake.Minimal(fake)).
	setup func(*Factory)
	// execs records the programs the commands started; each exits with
	// execCode.
	execs    [][]string
	execCode int
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	e := &testEnv{t: t, fake: fake.New(testProvider), home: t.TempDir()}
	e.fake.Caller = []netip.Prefix{callerPrefix}
	key := t.Name()
	fakes.Store(key, compute.Provider(e.fake))
	t.Cleanup(func() { fakes.Delete(key) })
	e.env = map[string]string{"HOME": e.home}
	cfgDir := filepath.Join(e.home, ".config", "compute")
	must(t, os.MkdirAll(cfgDir, 0o755))
	must(t, os.WriteFile(filepath.Join(cfgDir, "config.yaml"), []byte(fmt.Sprintf(
		"current: test\nprofiles:\n  test:\n    provider: %s\n    settings: {key: %q}\n", testProvider, key)), 0o644))
	must(t, os.MkdirAll(filepath.Join(e.home, ".ssh"), 0o700))
	must(t, os.WriteFile(filepath.Join(e.home, ".ssh", "id_ed25519.pub"), []byte(newPublicKey(t)+"\n"), 0o644))
	return e
}

// useProvider makes the registry return p (a wrapper of e.fake).
func (e *testEnv) useProvider(p compute.Provider) { fakes.Store(e.t.Name(), p) }

type result struct {
	code           int
	stdout, stderr string
}

func (e *testEnv) run(args ...string) result {
	e.t.Helper()
	ios, in, out, errOut := Test()
	in.WriteString(e.stdin)
	f := NewFactory(ios)
	f.Getenv = func(k string) string { return e.env[k] }
	// Never start a real ssh (it would dial the fake's addresses).
	f.LookPath = func(string) (string, error) { return "/usr/bin/ssh", nil }
	f.Exec = func(ctx context.Context, _ *IOStreams, argv []string) (int, error) {
		e.execs = append(e.execs, argv)
		return e.execCode, nil
	}
	if e.setup != nil {
		e.setup(f)
	}
	code := Main(context.Background(), f, args)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// runJSON runs with -o json, requires success and decodes stdout into v.
func (e *testEnv) runJSON(v any, args ...string) result {
	e.t.Helper()
	r := e.run(append(args, "-o", "json")...)
	if r.code != 0 {
		e.t.Fatalf("computectl %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(r.stdout)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		e.t.Fatalf("computectl %s -o json: output is not the expected JSON: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
	return r
}

// mustCreate creates an instance with no SSH rule and returns it.
func (e *testEnv) mustCreate(name string, extra ...string) *compute.Instance {
	e.t.Helper()
	var inst compute.Instance
	e.runJSON(&inst, append([]string{"create", name, "--no-ssh-rule"}, extra...)...)
	return &inst
}

func newPublicKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	sp, err := ssh.NewPublicKey(pub)
	must(t, err)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " test@cli"
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// oneLineError checks the error contract: stderr is exactly one line,
// "computectl: ..." containing want.
func oneLineError(t *testing.T, r result, want string) {
	t.Helper()
	if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "computectl: ") || !strings.Contains(r.stderr, want) {
		t.Errorf("stderr = %q, want one line \"computectl: ...%s...\"", r.stderr, want)
	}
}

func jsonUnmarshal(s string, v any) error {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
