package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/migrate"
)

func init() {
	register(&command{
		name:    "endpoint",
		summary: "list, set or delete endpoints and their locations (list only reads)",
		args:    "list | set ENDPOINT HOST | set ENDPOINT --encap HOST | del ENDPOINT",
		long: `
An endpoint is an address served through the gateway from a host (a
virtual machine, say); its location is that host. HOST is a next hop on an
attached segment: the gateway forwards the endpoint's packets to it (its
interface and MAC come from this host's neighbour table). A routed host,
--encap HOST (or ipip:HOST), is reached through routers: the gateway puts
each packet in an IP-in-IP header to HOST (source --migrate-encap-src of
tandem up) and HOST's kernel decapsulates it (its tunl0, sit0 or ip6tnl0
up; docs/migration.md). The migrate feature
(tandem up --migrate-iface IFACE) forwards packets that arrive on IFACE for
an endpoint to its location; tandem migrate moves an endpoint without
losing a packet. Endpoints are replicated to the peer gateway.

  list                     every endpoint, its location and its migration
                           (state, source, destination, queued updates,
                           held/flushed/overflow/lost packets); --json
  set ENDPOINT HOST        set the location (HOST, ipip:HOST, or
                           --encap HOST); while ENDPOINT migrates the
                           update is queued (said so, exit 0) and applied
                           in order when the move is done (dropped if it
                           is aborted); a HOST this host has no route
                           to (or one of its own addresses) is refused,
                           and so is an ENDPOINT that is not a unicast
                           address
  del ENDPOINT             remove it (refused while it migrates)

All talk to the daemon through its control socket in --state-dir
(migrate.sock), which only root and members of the daemon's control group
may use.`,
		examples: `  tandem endpoint set 10.2.0.50 10.2.1.11
  tandem endpoint set 10.2.0.51 --encap 192.0.2.7
  tandem endpoint list
  tandem endpoint del 10.2.0.50
`,
		flags: func(fs *pflag.FlagSet) any {
			f := &endpointFlags{jsonFlags: addJSONRootFlags(fs).(*jsonFlags)}
			fs.StringVar(&f.encap, "encap", "", "set: the location is the routed host HOST, reached by IP-in-IP (as ipip:HOST)")
			return f
		},
		run: runEndpoint,
	})
	register(&command{
		name:    "migrate",
		summary: "drive an endpoint's move between hosts: start, blackout, switch, done, abort",
		args:    "start ENDPOINT --to HOST | blackout | switch | done | abort | status ENDPOINT | follow",
		long: `
Moves an endpoint (tandem endpoint) from its host S to a host D without
losing a packet (docs/migration.md):

  start ENDPOINT --to D   pre-copy: packets still go to S; location
                          updates from now on are queued
  blackout ENDPOINT       S has stopped: packets are held by the gateway
                          (bounded: --migrate-hold-bytes/-packets of up)
  switch ENDPOINT         D runs: the held packets go to D first, in order,
                          then every new one (returns once the held ones
                          are sent)
  done ENDPOINT           the endpoint's location is D; queued updates are
                          applied in order
  abort ENDPOINT          back to S in any state (held packets first, to S);
                          queued updates are dropped
  status ENDPOINT         where the move is: its state, source, destination
                          and the packets held (tandem endpoint list: all)

A step that does not follow from the migration's state is refused (exit 1)
and changes nothing. The migration is replicated: the peer gateway
continues it after a failover. Without --gateway, steps go to this host's
daemon through its control socket in --state-dir.

tandem migrate reaches the gateways' daemons over mutual TLS 1.3 at their
--migrate-listen address (--gateway, repeat it for both gateways of the
pair: after a failover the other one answers). It presents the certificate
--name from --certs (ca.pem, NAME.pem, NAME-key.pem: issue it on the pair's
CA host with tandem certs --dir DIR NAME and copy those three files here);
the gateway admits it only when NAME is in its --migrate-clients. The
gateway's certificate must be of the same CA and list the address or name
dialled (tandem certs gw-a=IP), or one of --gateway-name.

tandem migrate follow runs next to QEMU, not on the gateway: it connects to
QEMU's QMP socket (QEMU started with -qmp unix:SOCKET,server=on,wait=off),
turns on migration events and maps them to the steps for --endpoint:
MIGRATION active -> start; STOP while migrating -> blackout; MIGRATION
completed (or RESUME on the destination, --role destination) -> switch and
done; failed or cancelled -> abort, and so does a QEMU found with no
migration after a reconnect (a new process: the move died with the old
one). Steps the gateways cannot take yet wait, in order, while QEMU's
events are still read. Repeated events send nothing twice and
the gateways treat a repeated step as done, so the follower reconnects to
QEMU (catching up from query-migrate) and to the gateways freely. It runs
until interrupted. Steps the gateway refuses are logged and skipped.

Exit status: 0 done, 1 the gateway refused or could not be reached, 2 a
usage error.`,
		examples: `  tandem migrate start 10.2.0.50 --to 10.2.1.12
  tandem migrate blackout 10.2.0.50
  tandem migrate switch 10.2.0.50
  tandem migrate done 10.2.0.50
  tandem migrate start 10.1.0.5 --to 10.2.0.12 --gateway 10.9.0.1:7402 --gateway 10.9.0.2:7402 --certs /etc/tandem/certs --name hv-1
  tandem migrate status 10.1.0.5 --gateway 10.9.0.1:7402 --name hv-1
  tandem migrate follow --qmp /run/vm1.qmp --endpoint 10.1.0.5 --to 10.2.0.12 --gateway 10.9.0.1:7402,10.9.0.2:7402 --name hv-1
`,
		flags: func(fs *pflag.FlagSet) any {
			f := &migrateFlags{rootFlags: addRootFlags(fs), remote: addRemoteFlags(fs)}
			fs.StringVar(&f.to, "to", "", "start: the destination: HOST (an address on an attached segment) or ipip:HOST (a routed host, IP-in-IP)")
			return f
		},
		run: runMigrate,
	})
}

type migrateFlags struct {
	*rootFlags
	remote *remoteFlags
	to     string
}

// migrateClient is the daemon's controller through its control socket.
func migrateClient(r *rootFlags) (*migrate.Client, string, error) {
	c, err := r.config()
	if err != nil {
		return nil, "", err
	}
	sock := daemon.MigrateSocket(c.StateDir)
	return migrate.UnixClient(sock), sock, nil
}

// controlErr says what to do about a failed call.
func controlErr(sock string, err error) error {
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || strings.Contains(err.Error(), "permission denied") {
		return fmt.Errorf("%v: this needs root, or membership of the daemon's control group (--control-group)", err)
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("no daemon serves migrations here (%s): start one with tandem up --migrate-iface IFACE (or give its --state-dir)", sock)
	}
	switch {
	case errors.Is(err, migrate.ErrNoEndpoint):
		return fmt.Errorf("%w (give it a location first: tandem endpoint set ENDPOINT HOST)", err)
	case errors.Is(err, migrate.ErrState):
		return fmt.Errorf("%w (tandem migrate status ENDPOINT shows where the move is)", err)
	}
	return err
}

// printMigrationStatus writes e's migration as tandem migrate status prints it
// from a gateway's migration control: ENDPOINT: STATE [from S to D][, N held].
func printMigrationStatus(w io.Writer, e migrate.Endpoint) {
	m := e.Migration
	if m == nil {
		fmt.Fprintf(w, "%s: none\n", e.Addr)
		return
	}
	dest := func(l migrate.Location) string {
		if l.Encap != "" {
			return l.Encap + ":" + l.Hop.String()
		}
		return l.Hop.String()
	}
	fmt.Fprintf(w, "%s: %s from %s to %s", e.Addr, m.State, dest(m.From), dest(m.To))
	if m.Held > 0 {
		fmt.Fprintf(w, ", %d held", m.Held)
	}
	fmt.Fprintln(w)
}

func parseAddr(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, usagef("%s %q: want an IPv4 or IPv6 address", what, s)
	}
	return a.Unmap(), nil
}

type endpointFlags struct {
	*jsonFlags
	encap string
}

// parseLocation reads a location argument: HOST or ipip:HOST.
func parseLocation(what, s string) (migrate.Location, error) {
	l, err := migrate.ParseLocation(s)
	if err != nil {
		return migrate.Location{}, usagef("%s %q: %v", what, s, err)
	}
	return l, nil
}

func runEndpoint(env Env, opts any, args []string) error {
	ef := opts.(*endpointFlags)
	f := ef.jsonFlags
	const use = "tandem endpoint list | set ENDPOINT HOST | set ENDPOINT --encap HOST | del ENDPOINT"
	action := "list"
	if len(args) > 0 {
		action = args[0]
	}
	want := map[string]int{"list": 1, "set": 3, "del": 2}
	if action == "set" && ef.encap != "" {
		want["set"] = 2 // the location is --encap's
	}
	if n, ok := want[action]; !ok || (len(args) != n && !(action == "list" && len(args) == 0)) {
		if action == "set" && ef.encap != "" && len(args) == 3 {
			return usagef("tandem endpoint set ENDPOINT --encap HOST: give the host once (--encap HOST, or HOST alone for a segment hop)")
		}
		return usagef(use)
	}
	if ef.encap != "" && action != "set" {
		return usagef("--encap goes with set only")
	}
	cl, sock, err := migrateClient(f.rootFlags)
	if err != nil {
		return err
	}
	switch action {
	case "list":
		list, err := cl.List()
		if err != nil {
			return controlErr(sock, err)
		}
		if f.json {
			return writeJSON(env.Stdout, list)
		}
		printEndpoints(env.Stdout, list)
		return nil
	case "set":
		ep, err := parseAddr("ENDPOINT", args[1])
		if err != nil {
			return err
		}
		if err := migrate.ValidateEndpoint(ep); err != nil {
			return usagef("%v", err)
		}
		var loc migrate.Location
		if ef.encap != "" {
			a, err := parseAddr("--encap", ef.encap)
			if err != nil {
				return err
			}
			loc = migrate.Location{Hop: a, Encap: migrate.EncapIPIP}
			if err := loc.Validate(); err != nil {
				return usagef("--encap: %v", err)
			}
		} else if loc, err = parseLocation("HOST", args[2]); err != nil {
			return err
		}
		queued, err := cl.SetLocation(ep, loc)
		if err != nil {
			return controlErr(sock, err)
		}
		if queued {
			fmt.Fprintf(env.Stdout, "%s is migrating: location %s queued, applied when the move is done (dropped if it is aborted)\n", ep, loc)
		}
		return nil
	default:
		ep, err := parseAddr("ENDPOINT", args[1])
		if err != nil {
			return err
		}
		if err := cl.Delete(ep); err != nil {
			return controlErr(sock, err)
		}
		return nil
	}
}

func printEndpoints(w io.Writer, list []migrate.Endpoint) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tLOCATION\tMIGRATION\tHELD\tFLUSHED\tOVERFLOW\tLOST\tQUEUED")
	for _, e := range list {
		if e.Migration == nil {
			fmt.Fprintf(tw, "%s\t%s\t-\t\t\t\t\t\n", e.Addr, e.Location)
			continue
		}
		m := e.Migration
		var q []string
		for _, l := range m.Queued {
			q = append(q, l.String())
		}
		st := fmt.Sprintf("%s %s -> %s", m.State, m.From, m.To)
		if m.Flushing {
			st += " (holding)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", e.Addr, e.Location, st, m.Held, m.Flushed, m.Overflow, m.Lost, strings.Join(q, ","))
	}
	tw.Flush()
}

func runMigrate(env Env, opts any, args []string) error {
	f := opts.(*migrateFlags)
	if len(args) > 0 && args[0] == "follow" {
		return runFollow(env, f.remote, f.to, args[1:])
	}
	if len(f.remote.gateways) > 0 {
		return runRemoteStep(env, f.remote, f.to, args)
	}
	const use = "tandem migrate start ENDPOINT --to HOST | blackout | switch | done | abort | status ENDPOINT"
	if len(args) != 2 {
		return usagef(use)
	}
	ep, err := parseAddr("ENDPOINT", args[1])
	if err != nil {
		return err
	}
	cl, sock, err := migrateClient(f.rootFlags)
	if err != nil {
		return err
	}
	step := map[string]func(netip.Addr) error{"blackout": cl.Blackout, "switch": cl.Switch, "done": cl.Done, "abort": cl.Abort}
	switch {
	case args[0] == "start":
		if f.to == "" {
			return usagef("tandem migrate start ENDPOINT --to HOST: --to is required")
		}
		to, err := parseLocation("--to", f.to)
		if err != nil {
			return err
		}
		err = cl.Start(ep, to)
		if err != nil {
			return controlErr(sock, err)
		}
		return nil
	case args[0] == "status":
		if f.to != "" {
			return usagef("--to goes with start only")
		}
		list, err := cl.List()
		if err != nil {
			return controlErr(sock, err)
		}
		for _, e := range list {
			if e.Addr == ep {
				printMigrationStatus(env.Stdout, e)
				return nil
			}
		}
		return controlErr(sock, fmt.Errorf("endpoint %s: %w", ep, migrate.ErrNoEndpoint))
	case step[args[0]] != nil:
		if f.to != "" {
			return usagef("--to goes with start only")
		}
		if err := step[args[0]](ep); err != nil {
			return controlErr(sock, err)
		}
		return nil
	}
	return usagef(use)
}
