package compute

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// requireOrSkip skips the test with reason, unless the environment asks
// for every integration test to run (COMPUTE_REQUIRE_INTEGRATION=1), in
// which case a missing prerequisite is a failure.
func requireOrSkip(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("COMPUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatal(reason)
	}
	t.Skip(reason)
}

// TestDependencies keeps the core light: a program that imports compute
// and policy must not pull in a cloud SDK, netlink or anything else outside
// the standard library, golang.org/x and go4.org/netipx. Providers, which
// do need such things, are separate packages imported on purpose.
func TestDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		requireOrSkip(t, "the go command is not in PATH: "+err.Error())
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".", "./policy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	const self = "github.com/compute-sdk/compute"
	allowed := func(pkg string) bool {
		return pkg == self || strings.HasPrefix(pkg, self+"/") ||
			strings.HasPrefix(pkg, "golang.org/x/") ||
			pkg == "go4.org/netipx" || strings.HasPrefix(pkg, "go4.org/netipx/")
	}
	var seen int
	for _, pkg := range strings.Fields(string(out)) {
		seen++
		if !allowed(pkg) {
			t.Errorf("compute or compute/policy depends on %s: only the standard library, golang.org/x/... and go4.org/netipx are allowed", pkg)
		}
		if strings.HasPrefix(pkg, self+"/") && pkg != self+"/policy" {
			t.Errorf("compute or compute/policy imports %s; the core must not depend on providers or internals", pkg)
		}
	}
	// The list must at least hold the packages themselves and netipx, or
	// the command did not list what we think it did.
	for _, must := range []string{self, self + "/policy", "go4.org/netipx", "golang.org/x/crypto/ssh"} {
		if !strings.Contains("\n"+string(out), "\n"+must+"\n") {
			t.Errorf("go list -deps output lacks %s:\n%s", must, out)
		}
	}
}
