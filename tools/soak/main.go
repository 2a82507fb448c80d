// Command soak is tandem's chaos run: random faults against a gateway
// pair (tools/gwpair) that carries SYN-proxied connections and a
// sequenced UDP stream, with invariants checked after every fault. See
// docs/testing.md ("Soak").
//
//	sudo go run ./tools/soak -tandem bin/tandem -duration 10m [-seed N] [-skip kind,...]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tandem-net/tandem/tools/lab"
)

func main() {
	os.Exit(soakMain())
}

func soakMain() int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: soak [flags]   (as root)

Injects random faults into a lab gateway pair running tandem (SIGKILL,
SIGSTOP, interface flaps, cut links, handovers, tandem down and up) while
connections and a UDP stream run through it, and checks after each fault:
one owner, no connection lost but the documented ones, both tables
equal, the stream flowing; at the end, no goroutine, fd or map leak.
Exit 0: no violation; 1: violations (listed, with the seed) or the lab
failed; 2: usage.

  sudo go run ./tools/soak -tandem bin/tandem -duration 2m
  sudo go run ./tools/soak -tandem bin/tandem -seed 42 -skip down-live

flags:
`)
		fs.PrintDefaults()
	}
	var (
		cfg  config
		skip string
		list bool
		keep bool
	)
	fs.StringVar(&cfg.bin, "tandem", "bin/tandem", "the tandem binary (make build)")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Minute, "how long to inject faults")
	fs.Uint64Var(&cfg.seed, "seed", 0, "the random seed (0: from the clock; printed, so a run can be repeated)")
	fs.IntVar(&cfg.conns, "conns", 100, "connections kept open through the SYN proxy")
	fs.StringVar(&skip, "skip", "", "fault kinds not to inject, comma-separated (-list shows them)")
	fs.BoolVar(&cfg.noSteady, "no-steady", false, "leave out the steady-pair check (CPU, advert rate) at the start and the end")
	fs.StringVar(&cfg.dir, "dir", "", "where the daemons' logs go (default: a new temporary directory, kept when the run fails)")
	fs.BoolVar(&list, "list", false, "list the fault kinds, what each may lose and why, and exit")
	fs.BoolVar(&keep, "keep", false, "keep the log directory even when the run passes")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "soak: unexpected argument %q (flags only; -h lists them)\n", fs.Arg(0))
		return 2
	}
	if list {
		for _, k := range kinds {
			fmt.Printf("%-12s weight %d: %s\n", k.name, k.weight, k.doc)
		}
		return 0
	}
	var err error
	if cfg.kinds, err = enabled(skip); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	if cfg.duration <= 0 || cfg.conns < 1 {
		fmt.Fprintln(os.Stderr, "soak: -duration and -conns must be positive")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "soak: needs root (network namespaces, BPF); run it with sudo")
		return 1
	}
	if cfg.bin, err = filepath.Abs(cfg.bin); err == nil {
		_, err = os.Stat(cfg.bin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: the tandem binary: %v (make build, or -tandem PATH)\n", err)
		return 1
	}
	if cfg.seed == 0 {
		cfg.seed = uint64(time.Now().UnixNano())
	}
	tmp := cfg.dir == ""
	if tmp {
		if cfg.dir, err = os.MkdirTemp("", "tandem-soak-"); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			return 1
		}
	} else if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	if err := lab.Sweep(); err != nil {
		fmt.Fprintln(os.Stderr, "soak: sweep stale labs:", err)
	}
	cfg.out = os.Stdout
	fmt.Printf("soak: seed %d, %s, %d connections, faults %v; logs in %s\n", cfg.seed, cfg.duration, cfg.conns, names(cfg.kinds), cfg.dir)
	stop := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() { <-sigs; close(stop) }()
	start := time.Now()
	t, err := run(cfg, stop)
	fmt.Print("\n" + t.summary(cfg.seed, time.Since(start)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: the lab failed (seed %d; logs in %s): %v\n", cfg.seed, cfg.dir, err)
		return 1
	}
	if len(t.violations) > 0 {
		fmt.Printf("logs in %s\n", cfg.dir)
		return 1
	}
	if tmp && !keep {
		os.RemoveAll(cfg.dir)
	}
	return 0
}
