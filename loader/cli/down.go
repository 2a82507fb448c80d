package cli

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
)

func init() {
	register(&command{
		name:    "down",
		summary: "detach and unpin everything tandem made under --bpffs",
		long: `
A daemon serving --bpffs is stopped first (SIGTERM; down waits up to
--stop-timeout and removes nothing if it does not stop): it would put back
what down removes. Then down detaches every program tandem attached (XDP
and TCX links, its own cls_bpf filters, and a clsact qdisc only if tandem
created it and no other filter is on it), then unpins tandem's programs and maps and removes the empty
directories. It also puts back every sysctl up changed
(net.ipv4.conf.IFACE.accept_local on --proxy-iface interfaces) to the
value it had before the first up; an interface that is gone by then is
skipped. Anything else under --bpffs is left alone and listed. Running
down when nothing is up is not an error. Counters are lost.

cls_bpf filters and sysctls are per network namespace: run down in the
namespace where up ran.`,
		examples: "  tandem down\n  tandem down --bpffs /sys/fs/bpf/tandem-lab\n  tandem down --stop-timeout 30s\n",
		flags: func(fs *pflag.FlagSet) any {
			f := &downFlags{rootFlags: addRootFlags(fs)}
			fs.BoolVarP(&f.verbose, "verbose", "v", false, "log each step")
			addLogFormat(fs, &f.logFmt)
			fs.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "how long to wait for a running daemon to stop")
			return f
		},
		run: runDown,
	})
}

func runDown(env Env, opts any, args []string) error {
	f := opts.(*downFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	c, err := f.rootFlags.config()
	if err != nil {
		return err
	}
	log, err := loggerAs(env.Stderr, f.verbose, f.logFmt)
	if err != nil {
		return err
	}
	if f.stopTimeout <= 0 {
		return usagef("--stop-timeout must be positive")
	}
	// A daemon would re-apply what down removes, and keep working on maps
	// no program uses: down stops it first.
	root := c.Datapath.Pins.Root
	unlock, err := daemon.Stop(root, f.stopTimeout, func(pid int) {
		fmt.Fprintf(env.Stdout, "stopping the tandem daemon (pid %d) that serves %s\n", pid, root)
	})
	if err != nil {
		return err
	}
	defer unlock()
	res, err := loader.Down(c.Datapath.Pins, log)
	if res != nil {
		for _, r := range res.Restored {
			fmt.Fprintf(env.Stdout, "restored sysctl %s (its value before up)\n", r)
		}
		if len(res.Detached)+len(res.Unpinned)+len(res.Restored) == 0 && err == nil {
			fmt.Fprintf(env.Stdout, "nothing of tandem's is pinned under %s\n", c.Datapath.Pins.Root)
		} else {
			fmt.Fprintf(env.Stdout, "detached %d attachment(s), unpinned %d object(s) under %s\n", len(res.Detached), len(res.Unpinned), c.Datapath.Pins.Root)
		}
		for _, l := range res.Left {
			fmt.Fprintf(env.Stdout, "left in place (not tandem's): %s\n", l)
		}
	}
	return err
}

type downFlags struct {
	*rootFlags
	verbose     bool
	logFmt      string
	stopTimeout time.Duration // how long to wait for the daemon to stop
}
