package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/migrate"
	"github.com/tandem-net/tandem/migrate/qmp"
	"github.com/tandem-net/tandem/migrate/remote"
	"github.com/tandem-net/tandem/syncer"
)

// remoteFlags are the flags of the migration drivers: the gateways'
// migration control (--migrate-listen) and the QMP follower. The migrate
// command adds them with addRemoteFlags; its run calls runFollow for
// follow and runRemoteStep when --gateway is given.
type remoteFlags struct {
	gateways []string
	gwNames  []string
	certs    string
	name     string
	endpoint string
	qmp      string
	role     string
	timeout  time.Duration
	verbose  bool
	logFmt   string
	pause    bool
	dstSw    bool
	holdStop bool
	holdRem  uint64
	drain    time.Duration
	startG   bool
}

func addRemoteFlags(fs *pflag.FlagSet) *remoteFlags {
	f := &remoteFlags{}
	fs.StringSliceVar(&f.gateways, "gateway", nil, "a gateway daemon's --migrate-listen HOST:PORT (repeat, or HOST:PORT,HOST:PORT: tried in turn)")
	fs.StringSliceVar(&f.gwNames, "gateway-name", nil, "accept only gateway certificates for these names (default: the certificate must list the HOST dialled)")
	fs.StringVar(&f.certs, "certs", "/etc/tandem/certs", "directory with ca.pem and NAME.pem/NAME-key.pem (see tandem certs)")
	fs.StringVar(&f.name, "name", "", "this host's certificate name, one of the gateway's --migrate-clients (default: the hostname)")
	fs.StringVar(&f.endpoint, "endpoint", "", "follow: the endpoint's address (the guest's)")
	fs.StringVar(&f.qmp, "qmp", "", "follow: QEMU's QMP unix socket")
	fs.StringVar(&f.role, "role", qmp.RoleSource, "follow: which QEMU this is: source (STOP is the blackout, completed the switch) or destination (RESUME is the switch)")
	fs.BoolVar(&f.pause, "pause-before-switchover", false, "follow, source: QEMU waits with the guest stopped until the gateway holds, then the follower lets it go on (the hold begins before the switchover, not a QEMU downtime late; what reached the source between QEMU's stop and the hold is still lost: add --hold-before-stop; a follower gone at that moment leaves the guest paused up to 2s)")
	fs.BoolVar(&f.dstSw, "destination-switches", false, "follow, source: leave switch and done to a follower on the destination (--role destination), which switches when the guest runs there")
	fs.BoolVar(&f.holdStop, "hold-before-stop", false, "follow, source: the follower stops the guest, after the gateway holds and the guest drained its tap (nothing is in flight to a stopped guest); the destination stays paused until a destination follower with --start-guest resumes it")
	fs.Uint64Var(&f.holdRem, "hold-remaining", 0, "follow, source, with --hold-before-stop: hold and stop once the pre-copy has at most this many bytes of RAM left (0: at once, when the move is active; a threshold QEMU passes between two polls falls back to the hold at QEMU's stop)")
	fs.DurationVar(&f.drain, "drain", 20*time.Millisecond, "follow, source, with --hold-before-stop: how long the running guest gets to read what reached its tap before the hold")
	fs.BoolVar(&f.startG, "start-guest", false, "follow, destination: resume the guest when its incoming move completed with it paused (the source's --hold-before-stop)")
	fs.DurationVar(&f.timeout, "timeout", remote.DefaultDialTimeout, "bound on a dial and on one request's answer")
	fs.BoolVarP(&f.verbose, "verbose", "v", false, "follow: log debug detail")
	addLogFormat(fs, &f.logFmt)
	return f
}

func (f *remoteFlags) client() (*remote.Client, error) {
	if len(f.gateways) == 0 {
		return nil, usagef("give the gateways with --gateway HOST:PORT (their --migrate-listen)")
	}
	if f.timeout <= 0 {
		// Every step would fail at once (and the follower retry forever).
		return nil, usagef("--timeout %s: want a positive duration", f.timeout)
	}
	for _, g := range f.gateways {
		if _, _, err := net.SplitHostPort(g); err != nil {
			return nil, usagef("--gateway %q: want HOST:PORT", g)
		}
	}
	name := f.name
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return nil, usagef("no --name and no hostname: %v", err)
		}
	}
	var cfg, err = syncer.ClientTLSConfig(f.certs, name)
	if len(f.gwNames) > 0 {
		cfg, err = syncer.TLSConfigAllowing(f.certs, name, f.gwNames)
		if err == nil {
			// The names are checked instead of the address dialled.
			names := slices.Clone(f.gwNames)
			cfg.ServerName = names[0]
			verify := cfg.VerifyConnection
			cfg.InsecureSkipVerify = true // the chain is verified below, against the pair's CA
			roots := cfg.RootCAs
			cfg.VerifyConnection = func(cs tlsState) error {
				if err := verifyChain(cs, roots); err != nil {
					return err
				}
				return verify(cs)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return &remote.Client{Gateways: f.gateways, TLS: cfg, Timeout: f.timeout}, nil
}

// runRemoteStep is tandem migrate STEP ENDPOINT against the gateways'
// migration control.
func runRemoteStep(env Env, f *remoteFlags, to string, args []string) error {
	if len(args) == 0 {
		return usagef("name a step: start, blackout, switch, done, abort, status ENDPOINT; or follow")
	}
	op := args[0]
	if !slices.Contains(remote.Ops, op) {
		return usagef("unknown step %q: want one of %s, or follow", op, strings.Join(remote.Ops, ", "))
	}
	if len(args) != 2 {
		return usagef("tandem migrate %s ENDPOINT", op)
	}
	if _, err := netip.ParseAddr(args[1]); err != nil {
		return usagef("endpoint %q: not an IP address", args[1])
	}
	if op == remote.OpStart {
		if _, err := migrate.ParseLocation(to); err != nil {
			return usagef("start: give the destination with --to HOST or --to ipip:HOST (%v)", err)
		}
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(env.Ctx, 4*f.timeout)
	defer cancel()
	resp, err := c.Do(ctx, remote.Request{Op: op, Endpoint: args[1], To: to})
	if err != nil {
		return err
	}
	note := ""
	if resp.Noop {
		note = " (already so: nothing changed)"
	}
	fmt.Fprintf(env.Stdout, "%s: %s", args[1], resp.State)
	if resp.From != "" || resp.To != "" {
		fmt.Fprintf(env.Stdout, " from %s to %s", orDash(resp.From), orDash(resp.To))
	}
	if resp.Held > 0 {
		fmt.Fprintf(env.Stdout, ", %d held", resp.Held)
	}
	fmt.Fprintln(env.Stdout, note)
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// remoteSteps is the follower's Stepper: one endpoint, one destination.
type remoteSteps struct {
	c        *remote.Client
	ep, to   string
	deadline time.Duration
}

func (s *remoteSteps) Step(ctx context.Context, op string) error {
	ctx, cancel := context.WithTimeout(ctx, s.deadline)
	defer cancel()
	req := remote.Request{Op: op, Endpoint: s.ep}
	if op == remote.OpStart {
		req.To = s.to
	}
	_, err := s.c.Do(ctx, req)
	var re *remote.RemoteError
	if errors.As(err, &re) && re.Code != remote.CodeStandby {
		return &qmp.Permanent{Err: err}
	}
	// No gateway would take it as the owner (a failover under way):
	// sent again, as to an unreachable gateway.
	return err
}

// runFollow is tandem migrate follow.
func runFollow(env Env, f *remoteFlags, to string, args []string) error {
	if len(args) > 0 {
		return usagef("follow takes no arguments (unexpected %q): give --qmp, --endpoint, --to, --gateway", args[0])
	}
	if f.qmp == "" {
		return usagef("follow: give QEMU's QMP socket with --qmp SOCKET")
	}
	if _, err := netip.ParseAddr(f.endpoint); err != nil {
		return usagef("follow: give the endpoint's address with --endpoint ADDR")
	}
	if _, err := migrate.ParseLocation(to); err != nil {
		return usagef("follow: give the destination with --to HOST or --to ipip:HOST (%v)", err)
	}
	if f.role != qmp.RoleSource && f.role != qmp.RoleDestination {
		return usagef("--role %q: source or destination", f.role)
	}
	// An option of the other role, or of an option not given, would do
	// nothing, silently.
	for _, o := range []struct {
		on   bool
		name string
	}{{f.holdStop, "--hold-before-stop"}, {f.pause, "--pause-before-switchover"}, {f.dstSw, "--destination-switches"}} {
		if o.on && f.role != qmp.RoleSource {
			return usagef("%s goes with --role source", o.name)
		}
	}
	if f.startG && f.role != qmp.RoleDestination {
		return usagef("--start-guest goes with --role destination")
	}
	if f.holdRem != 0 && !f.holdStop {
		return usagef("--hold-remaining goes with --hold-before-stop")
	}
	if f.drain <= 0 {
		return usagef("--drain %s: want a positive duration (default 20ms)", f.drain)
	}
	log, err := loggerAs(env.Stderr, f.verbose, f.logFmt)
	if err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	defer c.Close()
	fl := &qmp.Follower{QMP: f.qmp, Role: f.role, Log: log, PauseBeforeSwitchover: f.pause, DestinationSwitches: f.dstSw,
		HoldBeforeStop: f.holdStop, HoldRemaining: f.holdRem, Drain: f.drain, StartGuest: f.startG,
		Steps: &remoteSteps{c: c, ep: f.endpoint, to: to, deadline: 4 * f.timeout}}
	log.Info("following QEMU's migration", "qmp", f.qmp, "endpoint", f.endpoint, "to", to, "gateways", f.gateways)
	return fl.Run(env.Ctx)
}

type tlsState = tls.ConnectionState

// verifyChain checks the peer's chain against roots (the pair's CA) when
// the standard verification is off because names, not the address
// dialled, are checked.
func verifyChain(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the gateway presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}
