package main

import (
	"context"
	"net/netip"
	"time"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/internal/cli"
	"github.com/compute-sdk/compute/provider/local"
)

// wireLocal connects doctor and image build to the local provider.
func wireLocal(f *cli.Factory) {
	f.Doctor = func(ctx context.Context, sel cli.Selection) ([]cli.DoctorCheck, error) {
		cfg, err := localConfig(sel)
		if err != nil {
			return nil, err
		}
		var out []cli.DoctorCheck
		for _, c := range local.Doctor(ctx, cfg) {
			out = append(out, cli.DoctorCheck{Name: c.Name, OK: c.OK, Detail: c.Detail, Fix: c.Fix})
		}
		return out, nil
	}
	f.BuildImage = func(ctx context.Context, sel cli.Selection, o cli.ImageBuildOptions) (*cli.ImageInfo, error) {
		cfg, err := localConfig(sel)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		var rootfs string
		built := true
		if o.Force {
			rootfs, err = local.BuildImage(ctx, cfg.ImageDir, o.Step)
		} else {
			rootfs, built, err = local.EnsureImage(ctx, cfg.ImageDir, o.Step)
		}
		if err != nil {
			return nil, err
		}
		return &cli.ImageInfo{Name: "debian", Path: rootfs, Built: built, Duration: time.Since(start)}, nil
	}
}

// localConfig reads the settings of a local profile (the same keys
// compute.Open accepts). Other providers' settings mean nothing here, so
// with another provider selected doctor checks the defaults.
func localConfig(sel cli.Selection) (local.Config, error) {
	var cfg local.Config
	if sel.Provider != "local" {
		return cfg, nil
	}
	for k, v := range sel.Settings {
		switch k {
		case "root":
			cfg.Root = v
		case "prefix":
			cfg.Prefix = v
		case "imageDir":
			cfg.ImageDir = v
		case "masterKeyFile":
			cfg.MasterKeyFile = v
		case "pool":
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return cfg, compute.InvalidField("pool", v, err.Error())
			}
			cfg.Pool = p
		}
	}
	return cfg, nil
}
