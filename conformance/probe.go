package conformance

import (
	"os"

	"github.com/compute-sdk/compute/conformance/internal/probe"
)

// init turns the binary into the probe program when it runs inside an
// instance: the suite copies the running executable there and starts it
// with COMPUTE_CONFORMANCE_PROBE=1. Doing it in init means every binary that
// imports this package (a provider's test binary, computectl) can serve as
// the probe without wiring anything into its main or TestMain.
func init() {
	if os.Getenv(probe.EnvVar) == "1" {
		os.Exit(probe.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
}
