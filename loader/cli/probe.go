package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/loader"
)

func init() {
	register(&command{
		name:    "probe",
		summary: "report which kernel features tandem can use here and its fallbacks",
		long: `
Tries each kernel feature tandem uses by loading or attaching a trivial
program, never by reading the kernel version: every program type, helper
and map type the embedded programs use (read from the programs
themselves), loops, program size, instruction set, global data, BTF, XDP
links, bpffs, and the optional TCX links, batch map operations and kernel
BTF. One line per feature: ok or missing, and which programs (or which part
of tandem) need it. With --iface, also tests native XDP on those interfaces
(a program that passes every frame is attached for a moment).

Exit status 0 when everything required is there (missing optional features
are warnings, with the fallback tandem takes), 1 when something required
is missing: tandem needs Linux ` + loader.MinKernel + ` or later, run as root.`,
		examples: "  tandem probe\n  tandem probe -i eth0 --json\n",
		flags: func(fs *pflag.FlagSet) any {
			f := &probeFlags{}
			fs.StringSliceVarP(&f.ifaces, "iface", "i", nil, "also test native XDP on these interfaces")
			fs.BoolVar(&f.json, "json", false, "print JSON")
			return f
		},
		run: runProbe,
	})
}

type probeFlags struct {
	ifaces []string
	json   bool
}

func runProbe(env Env, opts any, args []string) error {
	f := opts.(*probeFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	feats := loader.Probe(f.ifaces)
	var missing []string
	for _, x := range feats {
		if x.Required && !x.Available {
			missing = append(missing, x.Name)
		}
	}
	if f.json {
		if err := writeJSON(env.Stdout, feats); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FEATURE\tSTATUS\tNEEDED BY")
		for _, x := range feats {
			st := "ok"
			switch {
			case !x.Available && x.Required:
				st = "MISSING"
			case !x.Available:
				st = "missing (optional)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", x.Name, st, x.NeededBy)
		}
		tw.Flush()
		for _, x := range feats {
			switch {
			case !x.Available && x.Required:
				fmt.Fprintf(env.Stdout, "missing: %s: %s; %s\n", x.Name, x.Detail, x.Without)
			case !x.Available:
				fmt.Fprintf(env.Stdout, "warning: %s: %s; without it %s\n", x.Name, x.Detail, x.Without)
			case x.Detail != "":
				fmt.Fprintf(env.Stdout, "note: %s: %s\n", x.Name, x.Detail)
			}
		}
	}
	switch {
	case len(missing) > 0 && missing[0] == "privileges":
		return fmt.Errorf("%w; without privileges the kernel refuses %d of the checks", loader.ErrPrivileges, len(missing)-1)
	case len(missing) > 0:
		return fmt.Errorf("%d required feature(s) missing (%s): tandem cannot run on this kernel; run it on Linux %s or later",
			len(missing), strings.Join(missing, ", "), loader.MinKernel)
	}
	return nil
}
