package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

func init() {
	register(&command{
		name:    "service",
		summary: "list, add, change or delete the SYN proxy's services",
		args:    "list | add VIP:PORT BACKEND:PORT[@WEIGHT]... | set VIP:PORT BACKEND:PORT --weight N|--drain | del VIP:PORT",
		long: `
A service is a VIP:port the SYN proxy answers for (tandem up --proxy-iface
loads the proxy) and the backends its connections are spread over: a new
flow's backend comes from the service's Maglev table (65,537 slots, each
backend's share in proportion to its weight) indexed by a hash of the
flow's addresses and ports, so both gateways of a pair pick the same one
and a backend coming or going moves only its own share of new flows. The
backend sees the client's address (NAT mode: backends route back through
the gateway). The VIP and its backends are of one address family; a
backend address:port serves one VIP. An open connection keeps its backend
whatever the table says.

  list   the services and their counters (SYNs answered, cookie ACKs,
         backend handshakes completed and failed, segments and payload
         bytes each way), then each backend: weight, state (active or
         drained), health, share of the table, new connections; and each
         checked backend's health detail: the verdict in use and where it
         comes from (own checks, or the owner's while this host is a
         standby), this host's own checks' verdict, the last check, checks
         and failures, the last error (from the daemon's status in
         --state-dir); --json for scripts
  add    adds a service or replaces its backends (BACKEND:PORT@WEIGHT,
         weight 1 by default, 0 drains); connections already open keep
         their backend
  set    changes one backend: --weight N (0 to 10000) or --drain (weight
         0: no new connections, open ones continue; --weight 1 undrains);
         the table is rebuilt and swapped whole
  del    removes a service; its open connections run to their end

Services in the config file ([[proxy.service]]) are applied by every up and
SIGHUP; services added here and not in the config are left alone by them.
Every writer of the services (add, set, del, up, the daemon's reload) takes
one lock under --bpffs, so concurrent runs never give two services one id.
Like add and del, set changes this host only: run it on both gateways of a
pair (identical weights give identical tables). A weight set here lasts
until the service is written again (add, or up and SIGHUP for a service in
the config, whose weights are the config's).
VIPs and backends are unicast addresses: not unspecified, broadcast,
multicast, loopback or link-local.`,
		examples: `  tandem service add 192.0.2.10:443 10.2.0.11:443 10.2.0.12:443@2
  tandem service add '[2001:db8::10]:443' '[fd00:2::11]:443'
  tandem service set 192.0.2.10:443 10.2.0.11:443 --drain
  tandem service set 192.0.2.10:443 10.2.0.11:443 --weight 1
  tandem service list
  tandem service del 192.0.2.10:443
`,
		flags: addServiceFlags,
		run:   runService,
	})
}

type serviceFlags struct {
	*jsonFlags
	weight int
	drain  bool
}

func addServiceFlags(fs *pflag.FlagSet) any {
	f := &serviceFlags{jsonFlags: addJSONRootFlags(fs).(*jsonFlags)}
	fs.IntVar(&f.weight, "weight", 0, "set: the backend's weight (0 to 10000; 0 drains)")
	fs.BoolVar(&f.drain, "drain", false, "set: drain the backend (weight 0): no new connections, open ones continue")
	return f
}

func runService(env Env, opts any, args []string) error {
	sf := opts.(*serviceFlags)
	f := sf.jsonFlags
	if len(args) == 0 {
		return usagef("name an action: list, add, set or del")
	}
	weightSet := sf.fs.Changed("weight")
	if args[0] != "set" && (sf.drain || weightSet) {
		return usagef("--weight and --drain go with set")
	}
	c, err := f.rootFlags.config()
	o := c.Datapath
	if err != nil {
		return err
	}
	// Arguments are checked before the machine is: a bad one is a usage
	// error wherever tandem runs.
	var (
		svc     maps.Service
		vip     netip.AddrPort
		backend netip.AddrPort
		weight  uint32
	)
	switch args[0] {
	case "list":
		if len(args) > 1 {
			return usagef("list takes no arguments")
		}
	case "add":
		if len(args) < 3 {
			return usagef("add VIP:PORT BACKEND:PORT [BACKEND:PORT...]")
		}
		if svc, err = loader.ServiceFrom(args[1], args[2:]); err != nil {
			return usageError{err.Error()}
		}
	case "set":
		if len(args) != 3 {
			return usagef("set VIP:PORT BACKEND:PORT --weight N|--drain")
		}
		if sf.drain == weightSet {
			return usagef("set: give one of --weight N or --drain")
		}
		if sf.weight < 0 || sf.weight > maps.MaxWeight {
			return usagef("--weight %d: 0 (drained) to %d", sf.weight, maps.MaxWeight)
		}
		if sf.weight > 0 {
			weight = uint32(sf.weight)
		}
		v, err := netip.ParseAddrPort(args[1])
		if err != nil {
			return usagef("set %q: want VIP:PORT ([ADDR]:PORT for IPv6)", args[1])
		}
		b, err := netip.ParseAddrPort(args[2])
		if err != nil {
			return usagef("set %s %q: want BACKEND:PORT ([ADDR]:PORT for IPv6)", args[1], args[2])
		}
		vip, backend = netip.AddrPortFrom(v.Addr().Unmap(), v.Port()), netip.AddrPortFrom(b.Addr().Unmap(), b.Port())
	case "del", "delete", "rm":
		if len(args) != 2 {
			return usagef("del VIP:PORT")
		}
		v, err := netip.ParseAddrPort(args[1])
		if err != nil {
			return usagef("del %q: want VIP:PORT ([ADDR]:PORT for IPv6)", args[1])
		}
		vip = netip.AddrPortFrom(v.Addr().Unmap(), v.Port())
	default:
		return usagef("unknown action %q: use list, add, set or del", args[0])
	}
	if err := loader.RequirePrivileges(); err != nil {
		return err
	}
	p, err := loader.OpenProxy(o.Pins)
	if err != nil {
		return err
	}
	defer p.Close()
	if d, err := time.ParseDuration(os.Getenv("TANDEM_TEST_SERVICE_PAUSE")); err == nil && d > 0 && d <= time.Second {
		maps.PutServicePause = d // tests: see maps.PutServicePause
	}
	switch args[0] {
	case "add":
		if svc, err = p.PutService(svc); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "service %s (id %d): %d backend(s)\n", svc.VIP, svc.ID, len(svc.Backends))
		return nil
	case "set":
		if err := p.SetBackendWeight(vip, backend, weight); err != nil {
			return err
		}
		state := fmt.Sprintf("weight %d", weight)
		if weight == 0 {
			state = "drained (weight 0): no new connections, open ones continue"
		}
		fmt.Fprintf(env.Stdout, "service %s backend %s: %s\n", vip, backend, state)
		return nil
	case "del", "delete", "rm":
		if err := p.DeleteService(vip); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "service %s removed\n", vip)
		return nil
	}
	ps, err := readProxyStatus(p)
	if err != nil {
		return err
	}
	updated, err := addHealth(ps.Services, c.StateDir, o.Pins)
	if err != nil {
		return err
	}
	if f.json {
		return writeJSON(env.Stdout, ps.Services)
	}
	printServices(env.Stdout, ps.Services)
	printHealth(env.Stdout, ps.Services, updated, time.Now())
	return nil
}

// ServiceStatus is a service with its counters.
type ServiceStatus struct {
	maps.Service
	Counters maps.SvcCounters `json:"counters"`
	// Each backend's weight, health, table share and new connections.
	BackendStates []maps.BackendState `json:"backend_states"`
	// Health: each checked backend's verdict and last check (health.go).
	Health []health.BackendStatus `json:"health,omitempty"`
}

// ProxyStatus is the SYN proxy part of tandem status.
type ProxyStatus struct {
	Services    []ServiceStatus   `json:"services"`
	Connections map[string]int    `json:"connections"`
	Counters    map[string]uint64 `json:"counters"`
}

func readProxyStatus(p *loader.Proxy) (*ProxyStatus, error) {
	svcs, err := p.ListServices()
	if err != nil {
		return nil, err
	}
	ps := &ProxyStatus{}
	for _, s := range svcs {
		c, err := p.ServiceCounters(s.ID)
		if err != nil {
			return nil, err
		}
		bs, err := p.BackendStates(s)
		if err != nil {
			return nil, err
		}
		ps.Services = append(ps.Services, ServiceStatus{Service: s, Counters: c, BackendStates: bs})
	}
	if ps.Connections, err = p.ConnCounts(); err != nil {
		return nil, fmt.Errorf("count connections: %w", err)
	}
	if ps.Counters, err = p.ProxyStats(); err != nil {
		return nil, fmt.Errorf("read proxy counters: %w", err)
	}
	return ps, nil
}

func printServices(w io.Writer, svcs []ServiceStatus) {
	if len(svcs) == 0 {
		fmt.Fprintln(w, "no services (add one with tandem service add VIP:PORT BACKEND:PORT...)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tID\tBACKENDS\tSYNS\tCOOKIE OK\tESTABLISHED\tFAILED\tPKTS IN\tBYTES IN\tPKTS OUT\tBYTES OUT")
	for _, s := range svcs {
		bs := make([]string, len(s.Backends))
		for i, b := range s.Backends {
			bs[i] = b.String()
		}
		c := s.Counters
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s.VIP, s.ID, strings.Join(bs, ","), c.Syns, c.Conns, c.Established, c.Failed, c.PktsIn, c.BytesIn, c.PktsOut, c.BytesOut)
	}
	tw.Flush()
	printBackends(w, svcs)
}

func printProxyStatus(w io.Writer, ps *ProxyStatus) {
	if ps == nil {
		return
	}
	fmt.Fprintln(w, "\nSYN proxy:")
	printServices(w, ps.Services)
	states := make([]string, 0, len(ps.Connections))
	for s, n := range ps.Connections {
		states = append(states, fmt.Sprintf("%s %d", s, n))
	}
	slices.Sort(states)
	if len(states) == 0 {
		states = []string{"none"}
	}
	fmt.Fprintf(w, "connections: %s\n", strings.Join(states, ", "))
	names := make([]string, 0, len(ps.Counters))
	for n, v := range ps.Counters {
		if v != 0 {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, ps.Counters[n]))
	}
	if len(parts) > 0 {
		fmt.Fprintf(w, "counters: %s\n", strings.Join(parts, ", "))
	}
}

// proxyStatus reads the proxy's status when one is loaded, nil if not.
func proxyStatus(pins maps.Pins) (*ProxyStatus, error) {
	p, err := loader.OpenProxy(pins)
	if errors.Is(err, loader.ErrNoProxy) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return readProxyStatus(p)
}

// printBackends is the per-backend table under the services: what the
// Maglev table gives each backend and what it took.
func printBackends(w io.Writer, svcs []ServiceStatus) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tBACKEND\tWEIGHT\tSTATE\tHEALTH\tSHARE\tCONNS")
	for _, s := range svcs {
		for _, b := range s.BackendStates {
			state := "active"
			if b.Drained {
				state = "drained"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%.1f%%\t%d\n", s.VIP, b.Addr, b.Weight, state, b.Health, 100*b.Share, b.Conns)
		}
	}
	tw.Flush()
}
