// Command computectl creates and manages compute instances, clusters and
// their firewall rules on any registered provider. See internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/compute-sdk/compute/internal/cli"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	// The first interrupt cancels the running operation (which cleans up
	// what it started); a second one kills computectl.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		signal.Stop(sigs)
	}()

	f := cli.NewFactory(cli.System())
	wire(f)
	code := cli.Main(ctx, f, os.Args[1:])
	cancel()
	os.Exit(code)
}
