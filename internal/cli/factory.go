package cli

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/compute-sdk/compute"
)

// Factory holds what commands need, built lazily: nothing is read or opened
// until a command asks for it, so `computectl create --help` or a bad flag
// never touches the config file or the provider.
type Factory struct {
	IOStreams *IOStreams
	// Getenv reads the environment (a map in tests).
	Getenv func(string) string
	// Open opens a provider; compute.Open by default.
	Open func(ctx context.Context, name string, settings map[string]string) (compute.Provider, error)
	// LookPath finds executables (the ssh client); exec.LookPath by default.
	LookPath func(string) (string, error)
	// Exec runs a program (argv[0] is its path) on the given streams and
	// returns its exit status; runProcess by default. It starts the ssh
	// client.
	Exec func(ctx context.Context, io *IOStreams, argv []string) (int, error)

	// Host-side features of the local provider, wired by cmd/computectl so
	// this package does not depend on the local provider's internals. A nil
	// hook makes its command fail with a clear error.
	// Doctor and BuildImage get the selected provider and settings (the
	// state root and image directory of a local profile).
	Doctor     func(ctx context.Context, sel Selection) ([]DoctorCheck, error)
	BuildImage func(ctx context.Context, sel Selection, opts ImageBuildOptions) (*ImageInfo, error)
	Verify     func(ctx context.Context, p compute.Provider, opts VerifyOptions) (*VerifyReport, error)

	// Global flags, bound by the root command.
	providerFlag string
	profileFlag  string
	configFlag   string
	outputFlag   string
	quiet        bool

	mu       sync.Mutex
	cfg      *Config
	provider compute.Provider
}

// DoctorCheck is one host check of `computectl doctor`.
type DoctorCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	// Fix says how to fix a failed check.
	Fix string `json:"fix,omitempty"`
}

// ImageBuildOptions are the options of `computectl image build`.
type ImageBuildOptions struct {
	Force bool
	// Step reports the current step, for the progress display.
	Step func(string)
}

// ImageInfo describes a built image.
type ImageInfo struct {
	Name     string        `json:"name"`
	Path     string        `json:"path"`
	Built    bool          `json:"built"` // false: the cached image was kept
	Duration time.Duration `json:"duration"`
}

// VerifyOptions are the options of `computectl verify`.
type VerifyOptions struct {
	Image, Type string
	Only        []string
	Timeout     time.Duration
	// CallerPrefixes are the addresses instances see this host as, for
	// providers that cannot tell (empty: ask the provider).
	CallerPrefixes []netip.Prefix
	// Step reports the check running now, for the progress display.
	Step func(string)
}

// VerifyReport is the conformance report.
type VerifyReport struct {
	Provider string         `json:"provider"`
	Started  time.Time      `json:"started"`
	Duration time.Duration  `json:"duration"`
	Results  []VerifyResult `json:"results"`
}

// VerifyResult is one conformance check.
type VerifyResult struct {
	Name     string        `json:"name"`
	Status   string        `json:"status"` // pass, fail, skip
	Reason   string        `json:"reason,omitempty"`
	Duration time.Duration `json:"duration"`
}

// NewFactory returns a factory for the real process environment.
func NewFactory(ios *IOStreams) *Factory {
	return &Factory{
		IOStreams: ios,
		Getenv:    os.Getenv,
		Open: func(ctx context.Context, name string, settings map[string]string) (compute.Provider, error) {
			return compute.Open(ctx, name, settings)
		},
		LookPath: exec.LookPath,
		Exec:     runProcess,
	}
}

// ConfigPath is the file Config reads.
func (f *Factory) ConfigPath() string {
	if f.configFlag != "" {
		return f.configFlag
	}
	return filepath.Join(configDir(f.Getenv), "config.yaml")
}

// Config reads the configuration file once.
func (f *Factory) Config() (*Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cfg != nil {
		return f.cfg, nil
	}
	cfg, err := LoadConfig(f.ConfigPath(), f.configFlag != "")
	if err != nil {
		return nil, err
	}
	f.cfg = cfg
	return cfg, nil
}

// Selection returns the provider and settings the flags, environment and
// configuration select.
func (f *Factory) Selection() (Selection, error) {
	cfg, err := f.Config()
	if err != nil {
		return Selection{}, err
	}
	return cfg.Select(f.providerFlag, f.profileFlag, f.Getenv)
}

// Provider opens the selected provider once.
func (f *Factory) Provider(ctx context.Context) (compute.Provider, error) {
	sel, err := f.Selection()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.provider != nil {
		return f.provider, nil
	}
	p, err := f.Open(ctx, sel.Provider, sel.Settings)
	if err != nil {
		return nil, err
	}
	f.provider = p
	return p, nil
}

// Printer returns the printer for the selected -o format. The format was
// validated before the command ran.
func (f *Factory) Printer() *Printer {
	format, _ := f.format()
	return &Printer{Format: format, Out: f.IOStreams.Out}
}

// format is -o, else COMPUTE_OUTPUT, else the config file's, else table.
func (f *Factory) format() (Format, error) {
	v := firstNonEmpty(f.outputFlag, f.Getenv("COMPUTE_OUTPUT"))
	if v == "" {
		if cfg, err := f.Config(); err == nil {
			v = cfg.Output
		}
	}
	return ParseFormat(v)
}

// StateDir is where computectl keeps its own files (known_hosts).
func (f *Factory) StateDir() string { return stateDir(f.Getenv) }

// HomeDir is the user's home directory.
func (f *Factory) HomeDir() string { return homeDir(f.Getenv) }

// Close closes the provider if one was opened.
func (f *Factory) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.provider == nil {
		return nil
	}
	err := f.provider.Close()
	f.provider = nil
	return err
}
