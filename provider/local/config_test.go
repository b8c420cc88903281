package local

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/compute-sdk/compute"
)

func TestConfigDefaults(t *testing.T) {
	for _, k := range []string{"COMPUTE_LOCAL_ROOT", "COMPUTE_LOCAL_PREFIX", "COMPUTE_LOCAL_POOL", "COMPUTE_MASTER_KEY_FILE", "COMPUTE_LOCAL_IMAGE_DIR"} {
		t.Setenv(k, "")
	}
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != DefaultRoot || c.Prefix != DefaultPrefix || c.Pool != DefaultPool || c.ImageDir != DefaultImageDir || c.MasterKeyFile != DefaultMasterKeyFile {
		t.Errorf("defaults %+v", c)
	}
	t.Setenv("COMPUTE_LOCAL_PREFIX", "zz")
	t.Setenv("COMPUTE_LOCAL_POOL", "10.9.0.0/16")
	c, _ = Config{}.withDefaults()
	if c.Prefix != "zz" || c.Pool != netip.MustParsePrefix("10.9.0.0/16") {
		t.Errorf("env overrides %+v", c)
	}
	for _, bad := range []Config{
		{Prefix: "TOOLONG"}, {Prefix: "a1"},
		{Pool: netip.MustParsePrefix("10.0.0.1/16")}, {Pool: netip.MustParsePrefix("10.0.0.0/24")}, {Pool: netip.MustParsePrefix("fd00::/48")},
	} {
		if _, err := bad.withDefaults(); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

func TestOpenConfigForms(t *testing.T) {
	for _, cfg := range []any{42, map[string]string{"bogus": "x"}, map[string]string{"pool": "nope"}, map[string]string{"prefix": "BAD"}} {
		if _, err := open(context.Background(), cfg); !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("open(%v): %v", cfg, err)
		}
	}
}

func TestAllocation(t *testing.T) {
	p := &Provider{cfg: Config{Prefix: "lt", Pool: netip.MustParsePrefix("10.232.0.0/22")}}
	recs := []*instanceRecord{
		{Subnet: netip.MustParsePrefix("10.232.0.0/24"), Addr: netip.MustParseAddr("10.232.0.2"), UIDBase: 0},
	}
	clusters := []*clusterRecord{{Subnet: netip.MustParsePrefix("10.232.1.0/24")}}
	s, err := p.freeSubnet(recs, clusters)
	if err != nil || s != netip.MustParsePrefix("10.232.2.0/24") {
		t.Errorf("freeSubnet = %v %v", s, err)
	}
	// The last /24 (10.232.3.0/24) is the link net: never handed out.
	clusters = append(clusters, &clusterRecord{Subnet: s})
	if s, err := p.freeSubnet(recs, clusters); !errors.Is(err, compute.ErrQuota) {
		t.Errorf("full pool: %v %v", s, err)
	}
	a, err := freeAddr(netip.MustParsePrefix("10.232.0.0/24"), recs)
	if err != nil || a != netip.MustParseAddr("10.232.0.3") {
		t.Errorf("freeAddr = %v %v", a, err)
	}
	b1, _ := p.freeUIDBase(nil)
	b2, _ := p.freeUIDBase([]*instanceRecord{{UIDBase: b1}})
	if b1 < uidFirst || b2 != b1+uidRangeSize || uint64(b1)+uidRangeSize*uidPerRegion > 1<<32-1 {
		t.Errorf("uid bases %#x %#x", b1, b2)
	}
	other := &Provider{cfg: Config{Prefix: "cf"}}
	if o, _ := other.freeUIDBase(nil); o == b1 {
		t.Logf("prefixes lt and cf share a region (allowed, but unlucky)")
	}
	if m := macOf("i-0a1b2c3d").String(); m != "02:c0:0a:1b:2c:3d" {
		t.Errorf("mac %s", m)
	}
}

func TestInstanceTypes(t *testing.T) {
	if typ, err := instanceType(""); err != nil || typ.Name != "small" {
		t.Errorf("default type %v %v", typ, err)
	}
	if _, err := instanceType("huge"); !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("unknown type: %v", err)
	}
}
