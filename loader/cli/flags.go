package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

type rootFlags struct {
	file     string // --config
	bpffs    string
	stateDir string
	fs       *pflag.FlagSet
}

func addRootFlags(fs *pflag.FlagSet) *rootFlags {
	r := &rootFlags{fs: fs}
	fs.StringVarP(&r.file, "config", "c", "", "host config file (TOML); flags override its values")
	fs.StringVar(&r.bpffs, "bpffs", maps.DefaultRoot, "root under which maps, programs and links are pinned")
	fs.StringVar(&r.stateDir, "state-dir", daemon.DefaultStateDir, "where the daemon keeps its sync metadata and status")
	return r
}

// config builds the config: defaults, then the config file, then the
// flags the user set.
func (r *rootFlags) config() (daemon.Config, error) {
	c := daemon.Defaults()
	if r.file != "" {
		fc, err := loader.ReadConfig(r.file)
		if err != nil {
			return c, err
		}
		if err := c.ApplyFile(fc); err != nil {
			// Every bad value, on one line (tandem config check lists them one a line).
			return c, &loader.ConfigError{Err: errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))}
		}
	}
	if r.fs.Changed("bpffs") {
		c.Datapath.Pins.Root = r.bpffs
	}
	if r.fs.Changed("state-dir") {
		c.StateDir = r.stateDir
	}
	if !filepath.IsAbs(c.Datapath.Pins.Root) {
		return c, usagef("--bpffs %q: must be an absolute path (below /sys/fs/bpf)", c.Datapath.Pins.Root)
	}
	return c, nil
}

type jsonFlags struct {
	*rootFlags
	json bool
}

func addJSONRootFlags(fs *pflag.FlagSet) any {
	f := &jsonFlags{rootFlags: addRootFlags(fs)}
	fs.BoolVar(&f.json, "json", false, "print JSON")
	return f
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printAttachments(w io.Writer, as []*loader.Attachment) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IFACE\tHOOK\tVIA\tPROG\tPROG ID\tLINK ID\tNOTE")
	for _, a := range as {
		link := "-"
		if a.LinkID != 0 {
			link = fmt.Sprint(a.LinkID)
		}
		note := a.Note
		if a.Problem != "" {
			note = "PROBLEM: " + a.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.Iface, a.Hook, a.Via, a.Prog, a.ProgID, link, note)
	}
	tw.Flush()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
