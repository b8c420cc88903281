package main

import "github.com/compute-sdk/compute/internal/cli"

// wire connects the host-side commands (doctor, image build, verify) to the
// packages that implement them.
func wire(f *cli.Factory) {}
