// Package bench records benchmark comparisons in one place: each result is
// tandem's figure, the anchor's figure measured in the same run, and their
// ratio. `make bench` points TANDEM_BENCH_OUT at bench/results.json, so
// docs and CI read the same numbers. Benchmarks print ratios; nothing here
// asserts a time.
package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Result is one comparison, the schema DESIGN.md names.
type Result struct {
	Name        string  `json:"name"`
	Unit        string  `json:"unit"`
	Value       float64 `json:"value"`
	Anchor      string  `json:"anchor"`
	AnchorValue float64 `json:"anchor_value"`
	Ratio       float64 `json:"ratio"` // value / anchor_value
	Goal        string  `json:"goal"`
	Kernel      string  `json:"kernel"`
	Date        string  `json:"date"`
}

// Kernel is the running kernel's release.
func Kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Record fills in the ratio, kernel and date, prints the comparison, and
// merges it (by name) into $TANDEM_BENCH_OUT when that is set.
func Record(r Result) (Result, error) {
	if r.AnchorValue != 0 {
		r.Ratio = r.Value / r.AnchorValue
	}
	r.Kernel = Kernel()
	r.Date = time.Now().UTC().Format(time.RFC3339)
	fmt.Printf("bench: %-40s %10.2f %-8s anchor %-28s %10.2f  ratio %.2f  goal: %s\n", r.Name, r.Value, r.Unit, r.Anchor, r.AnchorValue, r.Ratio, r.Goal)
	path := os.Getenv("TANDEM_BENCH_OUT")
	if path == "" {
		return r, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return r, err
	}
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return r, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return r, err
	}
	var all []Result
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return r, err
	default:
		if err := json.Unmarshal(data, &all); err != nil {
			return r, fmt.Errorf("%s: %w (remove it and run make bench again)", path, err)
		}
	}
	all = slices.DeleteFunc(all, func(x Result) bool { return x.Name == r.Name })
	all = append(all, r)
	slices.SortFunc(all, func(a, b Result) int { return strings.Compare(a.Name, b.Name) })
	out, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return r, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return r, err
	}
	return r, os.Rename(tmp, path)
}
