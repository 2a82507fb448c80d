package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tandem-net/tandem/maps"
)

func init() {
	register(&command{
		name:    "dump",
		summary: "print one pinned map",
		args:    "MAP",
		long: `
Prints a pinned map with named columns; per-CPU values are summed. MAP is
one of: ` + strings.Join(maps.Dumpable(), ", ") + `.
sync_test is the test program's replicated map (up --sync-test-iface), in
key order without the host-local queued epoch: a primary's dump and its
standby's are byte for byte equal once the standby has caught up.
The same maps carry BTF, so bpftool shows their field names too:
  bpftool map dump pinned /sys/fs/bpf/tandem/maps/vip_gate`,
		examples: "  tandem dump vip_gate\n  tandem dump vip_stats --json\n  diff <(tandem dump sync_test --bpffs /sys/fs/bpf/a) <(tandem dump sync_test --bpffs /sys/fs/bpf/b)\n",
		flags:    addJSONRootFlags,
		run:      runDump,
	})
}

func runDump(env Env, opts any, args []string) error {
	f := opts.(*jsonFlags)
	if len(args) != 1 {
		return usagef("name one map: %s", strings.Join(maps.Dumpable(), ", "))
	}
	if !slices.Contains(maps.Dumpable(), args[0]) {
		return usagef("unknown map %q: choose one of %s", args[0], strings.Join(maps.Dumpable(), ", "))
	}
	c, err := f.rootFlags.config()
	o := c.Datapath
	if err != nil {
		return err
	}
	var t *maps.Table
	if dump := maps.Dumper(args[0]); dump != nil {
		if t, err = dump(o.Pins); err != nil {
			return err
		}
	} else {
		vm, err := maps.OpenVIPMaps(o.Pins)
		if err != nil {
			return fmt.Errorf("%w (is tandem up under %s?)", err, o.Pins.Root)
		}
		defer vm.Close()
		if t, err = vm.Dump(args[0]); err != nil {
			return err
		}
	}
	if f.json {
		if t.Records == nil {
			t.Records = []map[string]any{}
		}
		return writeJSON(env.Stdout, t.Records)
	}
	fmt.Fprint(env.Stdout, maps.FormatTable(t))
	return nil
}
