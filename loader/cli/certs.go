package cli

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/syncer"
)

type certsFlags struct {
	dir      string
	validity time.Duration
}

func init() {
	register(&command{
		name:    "certs",
		summary: "create a pair CA and host certificates for the sync channel (labs and tests)",
		args:    "HOST[=IP,...] ...",
		long: `
Creates, in --dir, a CA for one pair of hosts (ca.pem, ca-key.pem; reused when
it is there) and for each HOST a certificate and key (HOST.pem, HOST-key.pem)
valid for its name and the listed addresses. The sync channel is TLS 1.3 with
mutual authentication: each host accepts only a peer whose certificate this CA
signed. For production pairs, bring certificates from your own PKI in the same
layout.`,
		examples: "  tandem certs --dir /etc/tandem/certs gw-a=192.0.2.1 gw-b=192.0.2.2\n",
		flags: func(fs *pflag.FlagSet) any {
			f := &certsFlags{}
			fs.StringVar(&f.dir, "dir", "/etc/tandem/certs", "where the CA and the certificates go")
			fs.DurationVar(&f.validity, "validity", 365*24*time.Hour, "how long the certificates are valid")
			return f
		},
		run: func(env Env, opts any, args []string) error {
			f := opts.(*certsFlags)
			if len(args) == 0 {
				return usagef("name at least one host")
			}
			if f.validity <= 0 {
				return usagef("--validity must be positive")
			}
			hosts := map[string][]net.IP{}
			for _, a := range args {
				name, ips, _ := strings.Cut(a, "=")
				if name == "" || strings.ContainsAny(name, "/ ") {
					return usagef("host %q: want NAME or NAME=IP,IP", a)
				}
				for _, s := range strings.Split(ips, ",") {
					if s == "" {
						continue
					}
					ip := net.ParseIP(s)
					if ip == nil {
						return usagef("host %s: %q is not an IP address", name, s)
					}
					hosts[name] = append(hosts[name], ip)
				}
				if _, ok := hosts[name]; !ok {
					hosts[name] = nil
				}
			}
			if err := syncer.MakeCerts(f.dir, hosts, f.validity); err != nil {
				return err
			}
			for name := range hosts {
				cert, key := syncer.HostFiles(f.dir, name)
				fmt.Fprintf(env.Stdout, "%s: %s %s\n", name, cert, key)
			}
			fmt.Fprintf(env.Stdout, "pair CA: %s/ca.pem\n", f.dir)
			return nil
		},
	})
}
