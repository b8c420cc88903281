package main

import (
	"context"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance"
	"github.com/compute-sdk/compute/internal/cli"
)

// wire connects the host-side commands (doctor, image build, verify) to the
// packages that implement them.
func wire(f *cli.Factory) {
	f.Verify = verify
	wireLocal(f)
}

func verify(ctx context.Context, p compute.Provider, o cli.VerifyOptions) (*cli.VerifyReport, error) {
	rep, err := conformance.Check(ctx, p, conformance.Options{
		Image:          o.Image,
		Type:           o.Type,
		Only:           o.Only,
		Timeout:        o.Timeout,
		CallerPrefixes: o.CallerPrefixes,
		Progress:       o.Step,
	})
	if rep == nil {
		return nil, err
	}
	out := &cli.VerifyReport{Provider: rep.Provider, Started: rep.Started, Duration: rep.Duration}
	for _, r := range rep.Results {
		out.Results = append(out.Results, cli.VerifyResult{Name: r.Name, Status: r.Status, Reason: r.Reason, Duration: r.Duration})
	}
	if err != nil {
		// The suite could not run (setup failed): the error says why; the
		// partial report is not printed.
		return nil, err
	}
	return out, nil
}
