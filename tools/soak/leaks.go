package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-net/tandem/tools/lab"
)

// metricsAddr is where every daemon serves its metrics, inside its own
// network namespace.
const metricsAddr = "127.0.0.1:9474"

// usage is what a daemon holds: goroutines (its go_goroutines), open
// file descriptors, and how many of those are BPF maps.
type usage struct{ goroutines, fds, mapFDs int }

func (u usage) String() string {
	return fmt.Sprintf("%d goroutines, %d fds (%d maps)", u.goroutines, u.fds, u.mapFDs)
}

// measure reads daemon pid's usage on host h. It takes the least of a few
// samples 200 ms apart: a scrape, a status request or a background close
// holds a goroutine or an fd for a moment, a leak holds them for good.
func measure(h *lab.Host, pid int) (usage, error) {
	var best usage
	for i := range 5 {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		var u usage
		m, err := scrape(h)
		if err != nil {
			return u, err
		}
		u.goroutines = int(m["go_goroutines"])
		if u.fds, u.mapFDs, err = fds(pid); err != nil {
			return u, err
		}
		if i == 0 {
			best = u
		}
		best = usage{min(best.goroutines, u.goroutines), min(best.fds, u.fds), min(best.mapFDs, u.mapFDs)}
	}
	return best, nil
}

// scrape reads the un-labelled samples of a daemon's /metrics. The
// socket is made inside the host (an HTTP client would dial from another
// thread, in another namespace).
func scrape(h *lab.Host) (map[string]float64, error) {
	var c net.Conn
	if err := h.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", metricsAddr, 5*time.Second)
		return err
	}); err != nil {
		return nil, fmt.Errorf("metrics on %s: %w", h.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: "+metricsAddr+"\r\n\r\n"); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("metrics on %s: %w", h.Name, err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || strings.HasPrefix(f[0], "#") || strings.Contains(f[0], "{") {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	if _, ok := out["go_goroutines"]; !ok {
		return nil, fmt.Errorf("metrics on %s: no go_goroutines in %d bytes", h.Name, len(body))
	}
	return out, nil
}

// fds counts process pid's open descriptors and the BPF maps among them.
func fds(pid int) (all, maps int, err error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	des, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, d := range des {
		b, err := os.ReadFile(filepath.Join(dir, d.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		all++
		if bytes.Contains(b, []byte("\nmap_id:")) {
			maps++
		}
	}
	return all, maps, nil
}

// pins lists what is pinned under a gateway's bpffs root.
func pins(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

// cpuTicks is process pid's user and system time so far, in clock ticks
// (USER_HZ, 100 a second on Linux).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: the fields start after its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return u + s, nil
}
