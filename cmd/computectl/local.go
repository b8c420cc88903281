package main

import "github.com/compute-sdk/compute/internal/cli"

// wireLocal connects doctor and image build to the local provider, once it
// is compiled in.
func wireLocal(f *cli.Factory) {}
