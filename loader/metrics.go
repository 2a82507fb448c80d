package loader

import "github.com/tandem-net/tandem/maps"

// ChainStats reads every interface's XDP chain as tandem status shows it
// (each configured stage's packets claimed and missed tail calls, and,
// last, the packets no stage claimed), by interface; for the daemon's
// metrics.
func ChainStats(pins maps.Pins) (map[string][]ChainStage, error) {
	ifaces, err := chainIfaces(pins)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]ChainStage, len(ifaces))
	for _, ifname := range ifaces {
		stages, err := readChain(pins, ifname)
		if err != nil {
			return nil, err
		}
		out[ifname] = stages
	}
	return out, nil
}
