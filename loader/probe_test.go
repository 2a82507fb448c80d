package loader_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestProbeMatchesKernel: tandem probe's answers agree with the kernel
// release each feature arrived in, on whatever kernel the suite runs (the
// host's and the matrix VM's). The probe itself never reads the version;
// this test does, to check it.
func TestProbeMatchesKernel(t *testing.T) {
	testenv.RequireRoot(t)
	out, err := exec.Command(testenv.Tandem(t), "probe", "--json").Output()
	if err != nil {
		t.Fatalf("tandem probe: %v\n%s", err, out)
	}
	var feats []loader.KernelFeature
	if err := json.Unmarshal(out, &feats); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	rel := kernelRelease()
	if _, err := fmt.Sscanf(rel, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", rel, err)
	}
	since := map[string][2]int{
		"program type xdp":       {4, 8},
		"map type ringbuf":       {5, 8},
		"xdp links (bpf_link)":   {5, 9},
		"tcx links":              {6, 6},
		"map batch operations":   {5, 6},
		"bounded loops":          {5, 3},
		"program type sched_cls": {4, 1},
	}
	seen := 0
	for _, f := range feats {
		v, ok := since[f.Name]
		if !ok {
			continue
		}
		seen++
		want := major > v[0] || major == v[0] && minor >= v[1]
		if f.Available != want {
			t.Errorf("kernel %s: probe says %q available=%v, but it arrived in %d.%d (%s)", rel, f.Name, f.Available, v[0], v[1], f.Detail)
		}
		t.Logf("kernel %s: %-24s %v", rel, f.Name, map[bool]string{true: "yes", false: "no: " + strings.TrimSpace(f.Without)}[f.Available])
	}
	if seen != len(since) {
		t.Errorf("probe reported %d of the %d features checked: %s", seen, len(since), out)
	}
}
