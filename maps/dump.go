package maps

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// Table is a map rendered as rows for `tandem dump`: Columns name the
// fields, each row has one value per column. Records keeps typed values
// for --json.
type Table struct {
	Map     string
	Columns []string
	Rows    [][]string
	Records []map[string]any
}

func (t *Table) add(rec map[string]any) {
	row := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		row[i] = fmt.Sprint(rec[c])
	}
	t.Rows = append(t.Rows, row)
	t.Records = append(t.Records, rec)
}

// Add appends one record (column name -> value) as a row.
func (t *Table) Add(rec map[string]any) { t.add(rec) }

// Dumpable lists the map names `tandem dump` accepts: the VIP gate's,
// which Dump renders, and those registered with RegisterDump.
func Dumpable() []string {
	out := []string{MapVIPGate, MapVIPStats, MapStats}
	for name := range dumpers {
		out = append(out, name)
	}
	slices.Sort(out[3:])
	return out
}

// dumpers render maps that are not the VIP gate's, by name.
var dumpers = map[string]func(Pins) (*Table, error){}

// RegisterDump makes `tandem dump name` render the map with fn. It is
// meant for init functions: the test-only synctest program registers its
// sync_test map this way, so the production lists do not name it.
func RegisterDump(name string, fn func(Pins) (*Table, error)) {
	if slices.Contains([]string{MapVIPGate, MapVIPStats, MapStats}, name) {
		panic("maps: RegisterDump " + name + ": the VIP gate's map")
	}
	dumpers[name] = fn
}

// Dumper returns the function registered for name, or nil.
func Dumper(name string) func(Pins) (*Table, error) { return dumpers[name] }

// Dump renders the named map.
func (m *VIPMaps) Dump(name string) (*Table, error) {
	switch name {
	case MapVIPGate:
		vips, err := m.VIPs()
		if err != nil {
			return nil, err
		}
		t := &Table{Map: name, Columns: []string{"vip", "owned", "index"}}
		for _, v := range vips {
			t.add(map[string]any{"vip": v.Addr.String(), "owned": v.Owned, "index": v.Index})
		}
		return t, nil
	case MapVIPStats:
		vips, err := m.VIPs()
		if err != nil {
			return nil, err
		}
		counters, err := m.VIPCounters()
		if err != nil {
			return nil, err
		}
		t := &Table{Map: name, Columns: []string{"vip", "index", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drop_not_owner"}}
		for _, v := range vips {
			c := counters[v.Addr]
			t.add(map[string]any{"vip": v.Addr.String(), "index": v.Index,
				"rx_packets": c.RxPackets, "rx_bytes": c.RxBytes, "tx_packets": c.TxPackets,
				"tx_bytes": c.TxBytes, "drop_not_owner": c.DropNotOwner})
		}
		return t, nil
	case MapStats:
		st, err := m.GlobalStats()
		if err != nil {
			return nil, err
		}
		t := &Table{Map: name, Columns: []string{"reason", "count"}}
		reasons := make([]StatReason, 0, len(st))
		for r := range st {
			reasons = append(reasons, r)
		}
		slices.Sort(reasons)
		for _, r := range reasons {
			t.add(map[string]any{"reason": StatNames[r], "count": st[r]})
		}
		return t, nil
	}
	return nil, fmt.Errorf("unknown map %q: choose one of %s", name, strings.Join(Dumpable(), ", "))
}

// Fill counts the entries of a hash map (arrays are always full), for
// `tandem status`.
func Fill(m *ebpf.Map) (int, error) {
	switch m.Type() {
	case ebpf.Array, ebpf.PerCPUArray:
		return int(m.MaxEntries()), nil
	}
	var (
		n    int
		prev []byte
		key  = make([]byte, m.KeySize())
	)
	for {
		var err error
		if prev == nil {
			err = m.NextKey(nil, &key)
		} else {
			err = m.NextKey(prev, &key)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("count entries: %w", err)
		}
		n++
		prev = slices.Clone(key)
	}
	return n, nil
}

// FormatTable writes t as aligned text columns.
func FormatTable(t *Table) string {
	w := make([]int, len(t.Columns))
	for i, c := range t.Columns {
		w[i] = len(c)
	}
	for _, r := range t.Rows {
		for i, v := range r {
			w[i] = max(w[i], len(v))
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		for i, v := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			if i == len(cells)-1 {
				b.WriteString(v)
			} else {
				b.WriteString(v + strings.Repeat(" ", w[i]-len(v)))
			}
		}
		b.WriteByte('\n')
	}
	line(t.Columns)
	for _, r := range t.Rows {
		line(r)
	}
	if len(t.Rows) == 0 {
		b.WriteString("(no entries)\n")
	}
	return b.String()
}

// Itoa formats counters the same way everywhere.
func Itoa(n uint64) string { return strconv.FormatUint(n, 10) }
