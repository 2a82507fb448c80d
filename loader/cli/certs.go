package cli

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/syncer"
)

type certsFlags struct {
	dir        string
	validity   time.Duration
	caValidity time.Duration
	newCA      bool
}

func init() {
	register(&command{
		name:    "certs",
		summary: "create a pair CA and host certificates for the sync channel (labs and tests)",
		args:    "HOST[=IP,...] ...",
		long: `
Creates, in --dir, a CA for one pair of hosts (ca.pem, ca-key.pem) and for
each HOST a certificate and key (HOST.pem, HOST-key.pem) valid for its name
and the listed addresses. The CA lives --ca-validity (10 years), host
certificates --validity (1 year). Run again with an existing CA, it issues
new host certificates signed by that CA, so renewing one host's certificate
never touches the other; --new-ca replaces the CA, and then every host of
the pair needs a new certificate. Keys are written mode 0600; the daemon
refuses a key that group or others can read.

The sync channel is TLS 1.3 with mutual authentication: each host accepts
only a certificate that this CA signed for the name it is told is its peer
(--sync-peer-name), in both directions. The output says which names to
configure on each host. A host that drives migrations (tandem migrate,
tandem migrate follow next to QEMU) gets its certificate the same way,
signed by the same CA: tandem certs --dir DIR hv-1; copy ca.pem, hv-1.pem
and hv-1-key.pem to it and add hv-1 to the gateways' --migrate-clients
(with more than two host certificates in the gateways' directory, name the
sync peer with --sync-peer-name). The daemon warns 30 days before its certificate or
the CA expires; tandem status shows the days left. For production pairs,
bring certificates from your own PKI in the same layout.`,
		examples: "  tandem certs --dir /etc/tandem/certs gw-a=192.0.2.1 gw-b=192.0.2.2\n" +
			"  tandem certs --dir /etc/tandem/certs gw-b=192.0.2.2     # renew one host's, same CA\n",
		flags: func(fs *pflag.FlagSet) any {
			f := &certsFlags{}
			fs.StringVar(&f.dir, "dir", "/etc/tandem/certs", "where the CA and the certificates go")
			fs.DurationVar(&f.validity, "validity", syncer.DefaultHostValidity, "how long the host certificates are valid")
			fs.DurationVar(&f.caValidity, "ca-validity", syncer.DefaultCAValidity, "how long a new CA is valid")
			fs.BoolVar(&f.newCA, "new-ca", false, "replace an existing CA (every host then needs a new certificate)")
			return f
		},
		run: func(env Env, opts any, args []string) error {
			f := opts.(*certsFlags)
			if len(args) == 0 {
				return usagef("name at least one host")
			}
			if f.validity <= 0 || f.caValidity <= 0 {
				return usagef("--validity and --ca-validity must be positive")
			}
			hosts := map[string][]net.IP{}
			var names []string
			for _, a := range args {
				name, ips, _ := strings.Cut(a, "=")
				if name == "" || name == "ca" || strings.ContainsAny(name, "/ ") || strings.HasSuffix(name, "-key") {
					return usagef("host %q: want NAME or NAME=IP,IP (not ca, nor ending in -key)", a)
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
					names = append(names, name)
				} else if !slices.Contains(names, name) {
					names = append(names, name)
				}
			}
			rep, err := syncer.IssueCerts(f.dir, hosts, syncer.CertOptions{HostValidity: f.validity, CAValidity: f.caValidity, NewCA: f.newCA})
			if err != nil {
				return err
			}
			until := func(t time.Time) string { return t.Format(time.DateOnly) }
			switch {
			case rep.CAReplaced:
				fmt.Fprintf(env.Stdout, "pair CA: %s: REPLACED, valid until %s; every host of the pair needs a new certificate from it (certificates of the old CA are refused)\n", rep.CA, until(rep.CANotAfter))
			case rep.CACreated:
				fmt.Fprintf(env.Stdout, "pair CA: %s: new, valid until %s\n", rep.CA, until(rep.CANotAfter))
			default:
				fmt.Fprintf(env.Stdout, "pair CA: %s: existing one reused (valid until %s); the certificates below are signed by it\n", rep.CA, until(rep.CANotAfter))
			}
			for _, h := range rep.Hosts {
				note := ""
				if h.Capped {
					note = " (cut to the CA's end of life: renew the CA with --new-ca)"
				}
				fmt.Fprintf(env.Stdout, "%s: %s %s, valid until %s%s\n", h.Name, h.Cert, h.Key, until(h.NotAfter), note)
			}
			fmt.Fprintln(env.Stdout, "configure (tandem up flags, or [sync] name and peer_name):")
			switch len(names) {
			case 2:
				for i, n := range names {
					fmt.Fprintf(env.Stdout, "  on %s: --sync-name %s --sync-peer-name %s\n", n, n, names[1-i])
				}
			default:
				for _, n := range names {
					fmt.Fprintf(env.Stdout, "  on %s: --sync-name %s; its peer names it with --sync-peer-name %s\n", n, n, n)
				}
			}
			return nil
		},
	})
}
