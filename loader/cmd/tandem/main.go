// Command tandem loads, pins and runs the tandem datapath. See
// `tandem --help` and the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tandem-net/tandem/loader/cli"
)

func main() {
	startProfiles()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	code := cli.Run(cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Ctx: ctx, Reload: reload}, os.Args[1:])
	stop()
	os.Exit(code)
}
