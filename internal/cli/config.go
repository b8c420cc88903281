package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/compute-sdk/compute"
	"sigs.k8s.io/yaml"
)

// Config is the computectl configuration file
// ($XDG_CONFIG_HOME/compute/config.yaml):
//
//	current: local
//	profiles:
//	  local:
//	    provider: local
//	    settings: {root: /var/lib/compute, prefix: cmp}
//	  prod:
//	    provider: aws
//	    settings: {region: eu-west-1}
type Config struct {
	// Current is the profile used when none is selected.
	Current  string             `json:"current,omitempty"`
	Profiles map[string]Profile `json:"profiles,omitempty"`
	// Output is the default -o format.
	Output string `json:"output,omitempty"`

	path string
}

// Profile names a provider and the settings passed to compute.Open.
type Profile struct {
	Provider string            `json:"provider"`
	Settings map[string]string `json:"settings,omitempty"`
}

// DefaultProvider is used when neither a flag, the environment nor the
// config file names one.
const DefaultProvider = "local"

// Path is where the configuration was (or would be) read from.
func (c *Config) Path() string { return c.path }

// LoadConfig reads the file at path. A missing file is an empty
// configuration unless mustExist (the user named it with --config).
func LoadConfig(path string, mustExist bool) (*Config, error) {
	c := &Config{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !mustExist {
		return c, nil
	}
	if err != nil {
		return nil, compute.InvalidField("--config", path, err.Error())
	}
	// Strict: a misspelt key is an error, not a silently ignored setting.
	if err := yaml.UnmarshalStrict(b, c); err != nil {
		return nil, compute.InvalidField("config", path, err.Error())
	}
	c.path = path
	for name, p := range c.Profiles {
		if p.Provider == "" {
			return nil, compute.InvalidField("config", path, fmt.Sprintf("profile %q names no provider", name))
		}
	}
	if c.Current != "" {
		if _, ok := c.Profiles[c.Current]; !ok {
			return nil, compute.InvalidField("config", path, fmt.Sprintf("current profile %q is not defined (profiles: %v)", c.Current, c.profileNames()))
		}
	}
	return c, nil
}

func (c *Config) profileNames() []string {
	var names []string
	for n := range c.Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Selection is the provider a command talks to and where that choice came
// from.
type Selection struct {
	Profile  string            `json:"profile,omitempty"`
	Provider string            `json:"provider"`
	Settings map[string]string `json:"settings,omitempty"`
}

// Select decides the provider. The profile is the --profile flag, else
// COMPUTE_PROFILE, else the file's current profile. The provider is the
// --provider flag, else COMPUTE_PROVIDER, else the profile's, else "local".
// A --provider value that names a profile selects that profile. A profile's
// settings are used only with its own provider (settings of one provider
// mean nothing to another), so --provider local with a current profile for
// local keeps that profile's settings.
func (c *Config) Select(providerFlag, profileFlag string, getenv func(string) string) (Selection, error) {
	profile := firstNonEmpty(profileFlag, getenv("COMPUTE_PROFILE"))
	if profile != "" {
		if _, ok := c.Profiles[profile]; !ok {
			return Selection{}, compute.InvalidField("profile", profile, fmt.Sprintf("not defined in %s (profiles: %v)", c.path, c.profileNames()))
		}
	}
	provider := firstNonEmpty(providerFlag, getenv("COMPUTE_PROVIDER"))
	if provider != "" && profile == "" {
		if _, ok := c.Profiles[provider]; ok {
			profile = provider
			provider = ""
		}
	}
	if profile == "" {
		profile = c.Current
	}
	var sel Selection
	if p, ok := c.Profiles[profile]; ok {
		sel = Selection{Profile: profile, Provider: p.Provider, Settings: p.Settings}
	}
	if provider != "" && provider != sel.Provider {
		sel = Selection{Provider: provider}
	}
	if sel.Provider == "" {
		sel.Provider = DefaultProvider
	}
	if sel.Settings == nil {
		sel.Settings = map[string]string{}
	}
	return sel, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// configDir returns $XDG_CONFIG_HOME/compute, else ~/.config/compute.
func configDir(getenv func(string) string) string {
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "compute")
	}
	return filepath.Join(homeDir(getenv), ".config", "compute")
}

// stateDir returns $XDG_STATE_HOME/compute, else ~/.local/state/compute.
func stateDir(getenv func(string) string) string {
	if d := getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "compute")
	}
	return filepath.Join(homeDir(getenv), ".local", "state", "compute")
}

func homeDir(getenv func(string) string) string {
	if h := getenv("HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	return "/"
}
