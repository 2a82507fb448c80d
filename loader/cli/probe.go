package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/loader"
)

func init() {
	register(&command{
		name:    "probe",
		summary: "report which kernel features tandem can use here and its fallbacks",
		long: `
Tries each feature tandem uses (program and map types, helpers, XDP and TCX
links, batch map operations, kernel BTF, bpffs) by loading or attaching a
trivial program, and says what tandem does where one is missing. With
--iface, also tests native XDP on those interfaces (a program that passes
every frame is attached for a moment). Exit status 1 when a required
feature is missing.`,
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

// Version is set at build time (-ldflags "-X .../cli.Version=v1.2.3").
func runProbe(env Env, opts any, args []string) error {
	f := opts.(*probeFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	feats := loader.Probe(f.ifaces)
	missing := 0
	for _, x := range feats {
		if x.Required && !x.Available {
			missing++
		}
	}
	if f.json {
		if err := writeJSON(env.Stdout, feats); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FEATURE\tAVAILABLE\tWITHOUT IT")
		for _, x := range feats {
			yes := "yes"
			if !x.Available {
				yes = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", x.Name, yes, x.Without)
		}
		tw.Flush()
		for _, x := range feats {
			if x.Detail != "" {
				fmt.Fprintf(env.Stdout, "note: %s: %s\n", x.Name, x.Detail)
			}
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d required feature(s) missing; tandem cannot run on this kernel (run as root? see the list above)", missing)
	}
	return nil
}
