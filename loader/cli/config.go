package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
)

func init() {
	register(&command{
		name:    "config",
		summary: "check a config file without touching the machine (config check FILE)",
		args:    "check FILE",
		long: `
config check reads FILE as tandem up --config FILE would and runs the
same checks up runs before it touches anything: syntax, unknown keys, every
value and its range, the choices that go together (a primary names its
peer, an interface for every feature, ...). It lists every problem, one
line each, not only the first, and exits 2 when there is any; 0 and
"FILE: ok" when there is none. It loads no program, reads no certificate
or secret and binds no address: those are checked by up itself (exit 1
when the machine says no). Run it before systemctl reload tandem.`,
		examples: "  tandem config check /etc/tandem/tandem.toml\n",
		flags:    func(fs *pflag.FlagSet) any { return nil },
		run:      runConfig,
	})
}

func runConfig(env Env, _ any, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usagef("want: tandem config check FILE")
	}
	if len(args) != 2 {
		return usagef("config check takes one FILE")
	}
	file := args[1]
	problems, err := checkConfig(file)
	if err != nil {
		return err
	}
	if len(problems) == 0 {
		fmt.Fprintf(env.Stdout, "%s: ok\n", file)
		return nil
	}
	for _, p := range problems {
		fmt.Fprintf(env.Stderr, "%s: %s\n", file, p)
	}
	s := "s"
	if len(problems) == 1 {
		s = ""
	}
	return usagef("%d problem%s in %s: fix them and check again", len(problems), s, file)
}

// checkConfig is every problem up would find in file before it touches
// the machine (up's own path: rootFlags.config, then Config.Validate);
// an error only when file cannot be read.
func checkConfig(file string) ([]string, error) {
	fc, err := loader.ReadConfig(file)
	var ce *loader.ConfigError
	if errors.As(err, &ce) {
		// A syntax error or unknown keys: the values cannot be trusted.
		return []string{strings.TrimPrefix(ce.Error(), "config "+file+": ")}, nil
	}
	if err != nil {
		return nil, err
	}
	var problems []string
	seen := map[string]bool{}
	add := func(err error) {
		for _, l := range strings.Split(err.Error(), "\n") {
			if l = strings.TrimSpace(l); l != "" && !seen[l] {
				seen[l] = true
				problems = append(problems, l)
			}
		}
	}
	c := daemon.Defaults()
	if err := c.ApplyFile(fc); err != nil {
		add(err)
	}
	if !filepath.IsAbs(c.Datapath.Pins.Root) {
		add(fmt.Errorf("bpffs %q: must be an absolute path (below /sys/fs/bpf)", c.Datapath.Pins.Root))
	}
	if err := c.Validate(); err != nil {
		add(err)
	}
	// Looking up control_group reads the group database, nothing else.
	if _, err := daemon.ControlGID(c.ControlGroup); err != nil {
		add(err)
	}
	return problems, nil
}
