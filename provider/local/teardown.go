package local

import (
	"context"
	"errors"
	"fmt"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/provider/local/internal/cgroups"
)

// Teardown removes what the provider shares between its instances: the
// router namespace, the host's veth, route and nftables table, and the
// cgroup directories of its prefix. Instances and clusters are the user's:
// Teardown refuses with compute.ErrConflict while any exists, so it can
// never cut an instance off. The state root and the master key stay.
//
// A provider value must not be used after Teardown; New sets the shared
// objects up again.
func (p *Provider) Teardown(ctx context.Context) error {
	unlock, err := p.lk.lock()
	if err != nil {
		return err
	}
	defer unlock()
	insts, err := p.st.instances()
	if err != nil {
		return err
	}
	clusters, err := p.st.clusters()
	if err != nil {
		return err
	}
	if len(insts) > 0 || len(clusters) > 0 {
		return fmt.Errorf("local: teardown: %d instances and %d clusters remain: %w", len(insts), len(clusters), compute.ErrConflict)
	}
	var errs []error
	if err := p.net.Teardown(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := cgroups.RemovePrefix(p.cgPrefix); err != nil {
		errs = append(errs, err)
	}
	// Close drops the shared bind mount of the instances directory now
	// that nothing lives below it.
	if err := p.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
