package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/compute-sdk/compute"
)

func TestSelect(t *testing.T) {
	cfg := &Config{
		Current: "dev",
		Profiles: map[string]Profile{
			"dev":  {Provider: "local", Settings: map[string]string{"prefix": "dv"}},
			"prod": {Provider: "aws", Settings: map[string]string{"region": "eu-west-1"}},
		},
		path: "config.yaml",
	}
	for _, tc := range []struct {
		name                   string
		providerFlag, profFlag string
		env                    map[string]string
		want                   Selection
		wantErr                bool
	}{
		{name: "current profile", want: Selection{Profile: "dev", Provider: "local", Settings: map[string]string{"prefix": "dv"}}},
		{name: "profile flag", profFlag: "prod", want: Selection{Profile: "prod", Provider: "aws", Settings: map[string]string{"region": "eu-west-1"}}},
		{name: "profile env", env: map[string]string{"COMPUTE_PROFILE": "prod"}, want: Selection{Profile: "prod", Provider: "aws", Settings: map[string]string{"region": "eu-west-1"}}},
		{name: "flag beats env", profFlag: "dev", env: map[string]string{"COMPUTE_PROFILE": "prod"}, want: Selection{Profile: "dev", Provider: "local", Settings: map[string]string{"prefix": "dv"}}},
		{name: "provider names a profile", providerFlag: "prod", want: Selection{Profile: "prod", Provider: "aws", Settings: map[string]string{"region": "eu-west-1"}}},
		{name: "provider env overrides profile provider, drops its settings", env: map[string]string{"COMPUTE_PROVIDER": "gcp"}, want: Selection{Provider: "gcp", Settings: map[string]string{}}},
		{name: "provider matching the current profile keeps settings", providerFlag: "local", want: Selection{Profile: "dev", Provider: "local", Settings: map[string]string{"prefix": "dv"}}},
		{name: "unknown profile", profFlag: "nope", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cfg.Select(tc.providerFlag, tc.profFlag, func(k string) string { return tc.env[k] })
			if tc.wantErr {
				if !errors.Is(err, compute.ErrInvalidArgument) {
					t.Errorf("err = %v, want ErrInvalidArgument", err)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("Select = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	var empty Config
	got, err := empty.Select("", "", func(string) string { return "" })
	if err != nil || got.Provider != DefaultProvider {
		t.Errorf("empty config selects %+v, %v", got, err)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	good := write("good.yaml", "current: l\noutput: json\nprofiles:\n  l:\n    provider: local\n    settings:\n      root: /tmp/x\n")
	c, err := LoadConfig(good, true)
	if err != nil || c.Profiles["l"].Settings["root"] != "/tmp/x" || c.Output != "json" {
		t.Fatalf("LoadConfig = %+v, %v", c, err)
	}
	for name, body := range map[string]string{
		"typo.yaml":       "curent: l\n",
		"noprov.yaml":     "profiles:\n  l:\n    settings: {a: b}\n",
		"nocurrent.yaml":  "current: x\nprofiles:\n  l: {provider: local}\n",
		"notyaml.yaml":    "profiles: [\n",
		"badsetting.yaml": "profiles:\n  l: {provider: local, settings: {a: [1]}}\n",
	} {
		if _, err := LoadConfig(write(name, body), true); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
	}
	if c, err := LoadConfig(filepath.Join(dir, "missing.yaml"), false); err != nil || c.Current != "" {
		t.Errorf("missing default config: %+v, %v", c, err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yaml"), true); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("missing --config file: err = %v", err)
	}

	// Through the command line: --config and XDG_CONFIG_HOME.
	e := newTestEnv(t)
	xdg := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(xdg, "compute"), 0o755))
	must(t, os.WriteFile(filepath.Join(xdg, "compute", "config.yaml"), []byte("current: x\nprofiles:\n  x: {provider: nothere}\n"), 0o644))
	e.env["XDG_CONFIG_HOME"] = xdg
	r := e.run("list")
	if r.code != ExitNotFound || !strings.Contains(r.stderr, `"nothere"`) {
		t.Errorf("XDG_CONFIG_HOME config not used: exit %d %q", r.code, r.stderr)
	}
	r = e.run("list", "--config", filepath.Join(dir, "missing.yaml"))
	if r.code != ExitUsage {
		t.Errorf("missing --config: exit %d %q", r.code, r.stderr)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("boom"), ExitError},
		{&FlagError{Err: errors.New("bad flag")}, ExitUsage},
		{compute.InvalidField("x", "y", "z"), ExitUsage},
		{fmt.Errorf("get: %w", compute.ErrNotFound), ExitNotFound},
		{fmt.Errorf("x: %w", compute.ErrConflict), ExitConflict},
		{fmt.Errorf("needs root: %w", compute.ErrPrecondition), ExitPrecondition},
		{fmt.Errorf("x: %w", compute.ErrUnsupported), ExitError},
		{fmt.Errorf("x: %w", compute.ErrQuota), ExitError},
		{fmt.Errorf("wait: %w", context.Canceled), ExitInterrupted},
		{&ExitCodeError{Code: 42}, 42},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if got := errorLine(errors.Join(errors.New("a"), errors.New("b"))); got != "a; b" {
		t.Errorf("errorLine = %q", got)
	}
}

func TestProgressOnlyOnTerminalTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		errTTY  bool
		args    []string
		spinner bool
	}{
		{"terminal table", true, nil, true},
		{"pipe", false, nil, false},
		{"terminal json", true, []string{"-o", "json"}, false},
		{"terminal quiet", true, []string{"-q"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.setup = func(f *Factory) {
				f.IOStreams.ErrTTY = tc.errTTY
				// A build slow enough for the spinner to draw.
				f.BuildImage = func(ctx context.Context, _ Selection, o ImageBuildOptions) (*ImageInfo, error) {
					o.Step("debootstrap")
					time.Sleep(250 * time.Millisecond)
					return &ImageInfo{Name: "debian-bookworm", Path: "/x", Built: true}, nil
				}
			}
			r := e.run(append([]string{"image", "build"}, tc.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d %q", r.code, r.stderr)
			}
			if got := strings.Contains(r.stderr, "debootstrap"); got != tc.spinner {
				t.Errorf("spinner shown = %v, want %v (stderr %q)", got, tc.spinner, r.stderr)
			}
		})
	}
}

func TestHostHooks(t *testing.T) {
	e := newTestEnv(t)
	// Without the hooks (a build without the local provider) the commands
	// say so.
	for _, args := range [][]string{{"doctor"}, {"image", "build"}, {"verify"}} {
		r := e.run(args...)
		if r.code != ExitError {
			t.Errorf("%v without hook: exit %d", args, r.code)
		}
		oneLineError(t, r, "built without")
	}

	checks := []DoctorCheck{{Name: "root", OK: true}, {Name: "inotify", OK: false, Detail: "max_user_instances=128", Fix: "sysctl -w fs.inotify.max_user_instances=8192"}}
	var gotOpts VerifyOptions
	report := &VerifyReport{Provider: testProvider, Results: []VerifyResult{
		{Name: "ssh/login", Status: "pass"}, {Name: "deny/tcp", Status: "fail", Reason: "port 4242 answered"}, {Name: "deny/dnat", Status: "skip", Reason: "n/a"},
	}}
	e.setup = func(f *Factory) {
		f.Doctor = func(_ context.Context, sel Selection) ([]DoctorCheck, error) {
			if sel.Provider != testProvider {
				t.Errorf("doctor got selection %+v", sel)
			}
			return checks, nil
		}
		f.Verify = func(ctx context.Context, p compute.Provider, o VerifyOptions) (*VerifyReport, error) {
			gotOpts = o
			if p.Name() != testProvider {
				t.Errorf("verify got provider %s", p.Name())
			}
			return report, nil
		}
	}
	r := e.run("doctor")
	if r.code != ExitPrecondition || !strings.Contains(r.stdout, "fix: sysctl -w fs.inotify.max_user_instances=8192") {
		t.Errorf("doctor: exit %d\n%s", r.code, r.stdout)
	}
	oneLineError(t, r, "inotify")
	var dc []DoctorCheck
	r = e.run("doctor", "-o", "json")
	if err := jsonUnmarshal(r.stdout, &dc); err != nil || len(dc) != 2 || dc[1].Fix == "" {
		t.Errorf("doctor -o json: %v %+v", err, dc)
	}

	r = e.run("verify", "--only", "deny/", "--only", "ssh/")
	if r.code != ExitError || !strings.Contains(r.stdout, "port 4242 answered") || !strings.Contains(r.stdout, "1 passed, 1 failed, 1 skipped") {
		t.Errorf("verify: exit %d\n%s", r.code, r.stdout)
	}
	oneLineError(t, r, "1 of 3 checks failed")
	if len(gotOpts.Only) != 2 || gotOpts.Only[0] != "deny/" {
		t.Errorf("verify options = %+v", gotOpts)
	}
	var rep VerifyReport
	r = e.run("verify", "-o", "json")
	if err := jsonUnmarshal(r.stdout, &rep); err != nil || len(rep.Results) != 3 || r.code != ExitError {
		t.Errorf("verify -o json: exit %d, %v", r.code, err)
	}
	report.Results[1].Status = "pass"
	if r := e.run("verify"); r.code != 0 {
		t.Errorf("verify all pass: exit %d %q", r.code, r.stderr)
	}
}
