package conformance_test

import (
	"context"
	"encoding/json"
	"log"
	"os"

	"github.com/compute-sdk/compute"
	"github.com/compute-sdk/compute/conformance"
	_ "github.com/compute-sdk/compute/provider/local"
)

// Check runs the suite outside of `go test`, as computectl verify does, and
// prints the report as a table and as JSON.
func ExampleCheck() {
	ctx := context.Background()
	p, err := compute.Open(ctx, "local", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	rep, err := conformance.Check(ctx, p, conformance.Options{Only: []string{"deny/", "rule/"}})
	if err != nil {
		log.Fatal(err)
	}
	rep.WriteTable(os.Stdout)
	json.NewEncoder(os.Stdout).Encode(rep)
	if rep.Failed() {
		os.Exit(1)
	}
}
