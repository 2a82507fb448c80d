package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/tandem-net/tandem/maps"
)

// FileConfig is the host config file (TOML). Flags override its values.
//
//	bpffs      = "/sys/fs/bpf/tandem"
//	interfaces = ["eth0"]
//	xdp_mode   = "auto"     # auto | native | generic
//	ingress    = "xdp"      # xdp | tc
//	tc         = "auto"     # auto | tcx | clsact
//	gate       = "enforce"  # enforce | monitor
//
//	[[vip]]
//	addr  = "192.0.2.10"
//	owned = true            # default true; false: a standby for this VIP
type FileConfig struct {
	BPFFS      string      `toml:"bpffs"`
	Interfaces []string    `toml:"interfaces"`
	XDPMode    string      `toml:"xdp_mode"`
	Ingress    string      `toml:"ingress"`
	TC         string      `toml:"tc"`
	Gate       string      `toml:"gate"`
	VIPs       []VIPConfig `toml:"vip"`
}

// VIPConfig is one [[vip]] table.
type VIPConfig struct {
	Addr  string `toml:"addr"`
	Owned *bool  `toml:"owned"`
}

// Defaults returns the options tandem uses when nothing says otherwise.
func Defaults() Options {
	return Options{
		Pins:    maps.Pins{Root: maps.DefaultRoot},
		XDPMode: XDPAuto,
		Ingress: IngressXDP,
		TC:      TCAuto,
		Gate:    GateEnforce,
		VIPs:    map[netip.Addr]bool{},
	}
}

// ReadConfig parses a config file strictly: unknown keys and bad values
// are errors that name the file and the key.
func ReadConfig(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var fc FileConfig
	md, err := toml.Decode(string(data), &fc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("config %s: unknown key(s) %s", path, strings.Join(keys, ", "))
	}
	return &fc, nil
}

// Apply lays the file's values over o.
func (fc *FileConfig) Apply(o *Options) error {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&o.Pins.Root, fc.BPFFS)
	set(&o.XDPMode, fc.XDPMode)
	set(&o.Ingress, fc.Ingress)
	set(&o.TC, fc.TC)
	set(&o.Gate, fc.Gate)
	if len(fc.Interfaces) > 0 {
		o.Interfaces = append([]string(nil), fc.Interfaces...)
	}
	if len(fc.VIPs) > 0 {
		o.VIPs = map[netip.Addr]bool{}
		for i, v := range fc.VIPs {
			a, err := netip.ParseAddr(v.Addr)
			if err != nil {
				return fmt.Errorf("config: vip #%d: %q is not an IP address", i+1, v.Addr)
			}
			if _, dup := o.VIPs[a.Unmap()]; dup {
				return fmt.Errorf("config: vip %s listed twice", a)
			}
			o.VIPs[a.Unmap()] = v.Owned == nil || *v.Owned
		}
	}
	return nil
}

// ParseVIP reads a --vip value: ADDR (owned) or ADDR=standby / ADDR=owned.
func ParseVIP(s string) (netip.Addr, bool, error) {
	addr, role, hasRole := strings.Cut(s, "=")
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("--vip %q: %q is not an IP address", s, addr)
	}
	if a.Zone() != "" {
		return netip.Addr{}, false, fmt.Errorf("--vip %q: a VIP has no zone", s)
	}
	if !hasRole || role == "owned" {
		return a.Unmap(), true, nil
	}
	if role == "standby" {
		return a.Unmap(), false, nil
	}
	return netip.Addr{}, false, fmt.Errorf("--vip %q: role %q: use ADDR, ADDR=owned or ADDR=standby", s, role)
}
