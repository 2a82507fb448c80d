// Package cli is the tandem command line: flag parsing, printing and the
// wiring of signals to the daemon (package daemon). It runs against an
// injected Env so tests drive it in-process; loader/cmd/tandem only wires
// up os.Stdout, signals and the exit code. One file per command (up.go,
// down.go, status.go, ...); shared flags and printing in flags.go. Noun
// commands (status, dump, probe, version) read; verb commands (up, down)
// write.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
)

// Env is the world a command runs in.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	// Ctx ends the daemon (SIGINT, SIGTERM).
	Ctx context.Context
	// Reload asks a running daemon to re-read its config (SIGHUP).
	Reload <-chan struct{}
}

// usageError is a mistake in how tandem was called: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name     string
	summary  string
	args     string // positional arguments, for the usage line
	long     string
	examples string
	flags    func(fs *pflag.FlagSet) any
	run      func(env Env, opts any, args []string) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

const overview = `tandem loads, pins and runs the tandem datapath (XDP/TC programs and their
maps) on a gateway host.

Usage:
  tandem COMMAND [flags] [args]

Commands that write:
  up        load and attach the datapath (or replace it in place), then run the daemon
  down      detach and unpin everything tandem made
  certs     create a pair CA and host certificates for the sync channel
  service   list, add or delete the SYN proxy's services (list only reads)
  vip       show the VIP election; vip handover moves the VIPs to the peer
  endpoint  list, set or delete endpoints' locations (list only reads)
  migrate   move an endpoint between hosts without loss: start, blackout, switch, done,
            abort, locally or over the gateways' migration control (--gateway), or
            migrate follow --qmp next to QEMU

Commands that read:
  status    what is attached where, program ids, map fill, counters
  dump      print one pinned map as a table (or JSON)
  sa        the IPsec SAs' replay state, windows, outbound sequences and drops (sa list)
  probe     check that this kernel has what tandem needs (exit 1 when not)
  version   tandem's version and build
  config    check a config file without touching the machine (config check FILE)

Run 'tandem COMMAND --help' for a command's flags and examples.
Pins live under --bpffs (default /sys/fs/bpf/tandem); inspect them with
'bpftool map dump pinned /sys/fs/bpf/tandem/maps/NAME'.
`

// Run executes one tandem command line and returns its exit status:
// 0 done, 1 it failed, 2 it was called wrongly.
func Run(env Env, args []string) int {
	if env.Ctx == nil {
		env.Ctx = context.Background()
	}
	if len(args) == 0 {
		fmt.Fprint(env.Stderr, overview)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				fmt.Fprint(env.Stdout, c.help())
				return 0
			}
		}
		fmt.Fprint(env.Stdout, overview)
		return 0
	case "--version":
		name = "version"
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.Stderr, "tandem: unknown command %q (commands: %s; see tandem --help)\n", name, strings.Join(names(), ", "))
		return 2
	}
	fs := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	opts := c.flags(fs)
	help := fs.BoolP("help", "h", false, "show this help")
	if err := fs.Parse(args[1:]); err != nil {
		fmt.Fprintf(env.Stderr, "tandem %s: %v (see tandem %s --help)\n", c.name, err, c.name)
		return 2
	}
	if *help {
		fmt.Fprint(env.Stdout, c.help())
		return 0
	}
	if err := c.run(env, opts, fs.Args()); err != nil {
		var (
			ue usageError
			de daemon.UsageError
			ce *loader.ConfigError
		)
		// A config file that cannot be used as written is a usage
		// error too; a file that cannot be read is a failure.
		if errors.As(err, &ue) || errors.As(err, &de) || errors.As(err, &ce) {
			fmt.Fprintf(env.Stderr, "tandem %s: %v (see tandem %s --help)\n", c.name, err, c.name)
			return 2
		}
		fmt.Fprintf(env.Stderr, "tandem %s: %v\n", c.name, err)
		return 1
	}
	return 0
}

func names() []string {
	var out []string
	for n := range commands {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (c *command) help() string {
	fs := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
	c.flags(fs)
	fs.BoolP("help", "h", false, "show this help")
	var b strings.Builder
	fmt.Fprintf(&b, "tandem %s: %s\n\nUsage:\n  tandem %s [flags]", c.name, c.summary, c.name)
	if c.args != "" {
		fmt.Fprintf(&b, " %s", c.args)
	}
	b.WriteString("\n\n")
	if c.long != "" {
		b.WriteString(strings.TrimSpace(c.long) + "\n\n")
	}
	b.WriteString("Flags:\n" + fs.FlagUsages())
	if c.examples != "" {
		b.WriteString("\nExamples:\n" + c.examples)
	}
	return b.String()
}

// loggerAs is the commands' logger (debug lines with verbose) in
// --log-format format: text (key=value) or json
// (one object a line). The state changes an operator acts on are info
// lines with an "event" key (README.md, "Install as a service", lists them).
func loggerAs(w io.Writer, verbose bool, format string) (*slog.Logger, error) {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	o := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, usagef("--log-format %q: text or json", format)
}

// addLogFormat defines --log-format.
func addLogFormat(fs *pflag.FlagSet, dst *string) {
	fs.StringVar(dst, "log-format", "text", "log lines as text (key=value) or json (one object a line)")
}
