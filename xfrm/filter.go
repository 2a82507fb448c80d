package xfrm

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Filter selects the SAs tandem syncs. The zero Filter (and nil) takes
// every ESP SA; each set field narrows it, and all must match.
type Filter struct {
	SPIMin, SPIMax uint32         // SPI range, inclusive (both 0: any)
	Dst, Src       []netip.Prefix // the SA's destination / source in one of these (empty: any)
	ReqIDs         []uint32       // the SA's reqid is one of these (empty: any)
	AllProtos      bool           // also AH and IPComp SAs (default: ESP only)
}

// Match reports whether sa is synced under f.
func (f *Filter) Match(sa SA) bool {
	if f == nil {
		return sa.Proto == protoESP
	}
	if !f.AllProtos && sa.Proto != protoESP {
		return false
	}
	if (f.SPIMin != 0 || f.SPIMax != 0) && (sa.SPI < f.SPIMin || sa.SPI > f.SPIMax) {
		return false
	}
	if !inAny(f.Dst, sa.Dst) || !inAny(f.Src, sa.Src) {
		return false
	}
	if len(f.ReqIDs) > 0 {
		for _, r := range f.ReqIDs {
			if r == sa.ReqID {
				return true
			}
		}
		return false
	}
	return true
}

const protoESP = 50

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	if len(ps) == 0 {
		return true
	}
	for _, p := range ps {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// ParseFilter reads the config form of a Filter: "all", or
// comma-separated terms spi=LO-HI (or one SPI; hex with 0x), dst=PREFIX,
// src=PREFIX, reqid=N (dst, src and reqid repeat: any of them),
// proto=any.
func ParseFilter(s string) (*Filter, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "all" {
		return nil, nil
	}
	f := &Filter{}
	for _, term := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(term), "=")
		if !ok {
			return nil, fmt.Errorf("SA filter term %q: want key=value (spi, dst, src, reqid, proto)", term)
		}
		switch k {
		case "spi":
			lo, hi, rng := strings.Cut(v, "-")
			a, err := strconv.ParseUint(lo, 0, 32)
			if err != nil {
				return nil, fmt.Errorf("SA filter spi %q: %w", v, err)
			}
			b := a
			if rng {
				if b, err = strconv.ParseUint(hi, 0, 32); err != nil {
					return nil, fmt.Errorf("SA filter spi %q: %w", v, err)
				}
			}
			if b < a || a == 0 {
				return nil, fmt.Errorf("SA filter spi %q: want LO-HI with 0 < LO <= HI", v)
			}
			f.SPIMin, f.SPIMax = uint32(a), uint32(b)
		case "dst", "src":
			p, err := netip.ParsePrefix(v)
			if err != nil {
				a, aerr := netip.ParseAddr(v)
				if aerr != nil {
					return nil, fmt.Errorf("SA filter %s %q: want an address or prefix: %w", k, v, err)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if k == "dst" {
				f.Dst = append(f.Dst, p.Masked())
			} else {
				f.Src = append(f.Src, p.Masked())
			}
		case "reqid":
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				return nil, fmt.Errorf("SA filter reqid %q: %w", v, err)
			}
			f.ReqIDs = append(f.ReqIDs, uint32(n))
		case "proto":
			if v != "any" && v != "esp" {
				return nil, fmt.Errorf("SA filter proto %q: want esp or any", v)
			}
			f.AllProtos = v == "any"
		default:
			return nil, fmt.Errorf("SA filter key %q: want spi, dst, src, reqid or proto", k)
		}
	}
	return f, nil
}
