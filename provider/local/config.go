package local

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"

	"github.com/compute-sdk/compute"
)

// Defaults of Config.
const (
	DefaultRoot          = "/var/lib/compute"
	DefaultPrefix        = "cmp"
	DefaultImageDir      = "/var/lib/compute/images"
	DefaultMasterKeyFile = "/etc/compute/master.key"
)

// DefaultPool is the default IPv4 pool of instance subnets.
var DefaultPool = netip.MustParsePrefix("10.199.0.0/16")

// Config configures the local provider. The zero value means defaults.
type Config struct {
	// Root is the state root (records, instance disks, lock), default
	// /var/lib/compute.
	Root string
	// Prefix is the object-name prefix (1-4 lowercase letters), default
	// "cmp". Every kernel object the provider creates carries it, and GC
	// touches nothing else.
	Prefix string
	// Pool is the IPv4 pool instance subnets come from, default
	// 10.199.0.0/16: one /24 per cluster or lone instance; the last /24 is
	// for the host<->router link and probe hosts.
	Pool netip.Prefix
	// ImageDir caches the built image, shared by every Root, default
	// /var/lib/compute/images.
	ImageDir string
	// MasterKeyFile holds the AES-256 master key (32 bytes, mode 0600) that
	// wraps instance keys, default /etc/compute/master.key. It lives
	// outside Root so that a copy of the state root alone decrypts nothing.
	// It is created on first use if missing.
	MasterKeyFile string
	Logger        *slog.Logger

	// noPrivateUsers boots instances without a user namespace (their root
	// is the host's root, minus what nspawn drops). Only benchmarks use
	// it, to compare.
	noPrivateUsers bool
}

var prefixRE = regexp.MustCompile(`^[a-z]{1,4}$`)

// withDefaults fills in defaults and environment overrides
// (COMPUTE_LOCAL_ROOT, COMPUTE_LOCAL_PREFIX, COMPUTE_LOCAL_POOL,
// COMPUTE_MASTER_KEY_FILE), which apply only to fields left empty.
func (c Config) withDefaults() (Config, error) {
	if c.Root == "" {
		c.Root = envOr("COMPUTE_LOCAL_ROOT", DefaultRoot)
	}
	if c.Prefix == "" {
		c.Prefix = envOr("COMPUTE_LOCAL_PREFIX", DefaultPrefix)
	}
	if !c.Pool.IsValid() {
		if s := os.Getenv("COMPUTE_LOCAL_POOL"); s != "" {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return c, compute.InvalidField("pool", s, err.Error())
			}
			c.Pool = p
		} else {
			c.Pool = DefaultPool
		}
	}
	if c.ImageDir == "" {
		c.ImageDir = envOr("COMPUTE_LOCAL_IMAGE_DIR", DefaultImageDir)
	}
	if c.MasterKeyFile == "" {
		c.MasterKeyFile = envOr("COMPUTE_MASTER_KEY_FILE", DefaultMasterKeyFile)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if !prefixRE.MatchString(c.Prefix) {
		return c, compute.InvalidField("prefix", c.Prefix, "must be 1-4 lowercase letters")
	}
	if !c.Pool.Addr().Is4() || c.Pool.Masked() != c.Pool || c.Pool.Bits() > 23 {
		return c, compute.InvalidField("pool", c.Pool.String(), "must be a canonical IPv4 prefix of /23 or larger")
	}
	return c, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func init() {
	compute.Register("local", open)
}

// open is the compute.Open entry point.
func open(ctx context.Context, config any) (compute.Provider, error) {
	var cfg Config
	switch c := config.(type) {
	case nil:
	case Config:
		cfg = c
	case *Config:
		if c != nil {
			cfg = *c
		}
	case map[string]string:
		for k, v := range c {
			switch k {
			case "root":
				cfg.Root = v
			case "prefix":
				cfg.Prefix = v
			case "pool":
				p, err := netip.ParsePrefix(v)
				if err != nil {
					return nil, compute.InvalidField("pool", v, err.Error())
				}
				cfg.Pool = p
			case "imageDir":
				cfg.ImageDir = v
			case "masterKeyFile":
				cfg.MasterKeyFile = v
			default:
				return nil, compute.InvalidField("config", k, "unknown setting (want root, prefix, pool, imageDir, masterKeyFile)")
			}
		}
	default:
		return nil, compute.InvalidField("config", fmt.Sprintf("%T", config), "want local.Config, *local.Config or map[string]string")
	}
	p, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return p, nil
}
