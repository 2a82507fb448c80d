package loader_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf/asm"

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

// probeRun runs `tandem probe --json` (as uid 65534 when cred is set) and
// returns its features, its stderr and its exit code.
func probeRun(t *testing.T, cred *syscall.Credential) ([]loader.KernelFeature, string, int) {
	t.Helper()
	cmd := exec.Command(testenv.Tandem(t), "probe", "--json")
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var feats []loader.KernelFeature
	if err := json.Unmarshal(out, &feats); err != nil {
		t.Fatalf("probe --json: %v\n%s", err, out)
	}
	return feats, stderr.String(), code
}

// TestProbeRequiredAllOK: on the kernels the suite runs on (this one and
// the 6.1 VM) every required feature is there and probe exits 0; the
// checks the programs depend on are each a line of their own.
func TestProbeRequiredAllOK(t *testing.T) {
	testenv.RequireRoot(t)
	feats, stderr, code := probeRun(t, nil)
	if code != 0 {
		t.Errorf("tandem probe: exit %d: %s", code, stderr)
	}
	names := map[string]loader.KernelFeature{}
	for _, f := range feats {
		names[f.Name] = f
		if f.Required && !f.Available {
			t.Errorf("kernel %s: required %q missing: %s", kernelRelease(), f.Name, f.Detail)
		}
		if f.Required && f.NeededBy == "" {
			t.Errorf("required %q does not say what needs it", f.Name)
		}
	}
	for _, want := range []string{
		"program type xdp", "program type sched_cls", "program type syscall",
		"helper bpf_ktime_get_tai_ns", "helper bpf_loop", "helper bpf_xdp_load_bytes", "helper bpf_xdp_store_bytes",
		"helper bpf_fib_lookup", "helper bpf_clone_redirect", "helper bpf_for_each_map_elem", "helper bpf_tail_call",
		"helper bpf_ringbuf_reserve", "map type ringbuf", "map type array_of_maps", "map type prog_array",
		"btf (program and map types)", "xdp links (bpf_link)", "tcx links", "map batch operations",
	} {
		if _, ok := names[want]; !ok {
			t.Errorf("probe has no line %q", want)
		}
	}
	if f := names["tcx links"]; f.Required {
		t.Errorf("tcx links marked required: clsact is the fallback")
	}
}

// TestProbeMissingExits1: where the required features are missing (here:
// for a user without the privileges to load programs) probe exits 1 and
// says what to do.
func TestProbeMissingExits1(t *testing.T) {
	testenv.RequireRoot(t)
	feats, stderr, code := probeRun(t, &syscall.Credential{Uid: 65534, Gid: 65534})
	if code != 1 {
		t.Fatalf("probe as uid 65534: exit %d, want 1\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "needs root") {
		t.Errorf("probe's error does not say what to do: %s", stderr)
	}
	missing := map[string]bool{}
	for _, f := range feats {
		missing[f.Name] = !f.Available && f.Required
	}
	if !missing["privileges"] || !missing["program type xdp"] {
		t.Errorf("as uid 65534: privileges missing %v, program type xdp missing %v; want both", missing["privileges"], missing["program type xdp"])
	}
	for _, f := range feats {
		if !f.Available && f.Required && f.Without == "" {
			t.Errorf("missing %q: no word on what to do", f.Name)
		}
	}
}

// notHelpers are bpf_* calls in the C sources that are macros or libbpf
// wrappers (bpf_tail_call_static is bpf_tail_call with a constant slot), not helpers.
var notHelpers = []string{"bpf_htons", "bpf_ntohs", "bpf_htonl", "bpf_ntohl", "bpf_cpu_to_be64", "bpf_be64_to_cpu", "bpf_printk", "bpf_tail_call_static", "bpf_core_read"}

// optionalObjects are probed whole, by loading and attaching them, in
// their own optional probe line (esptrace.c: "esp replay hooks"); their
// helpers are not required ones.
var optionalObjects = []string{"esptrace.c"}

// TestProbeCoversHelpers: every helper the shipped C sources call is one
// tandem probe checks, so the probe's list cannot fall behind the
// programs (a helper called only in dead code, or missed by the object
// reader, fails here). Test-only programs (*test.c) do not count.
func TestProbeCoversHelpers(t *testing.T) {
	probed, err := loader.ProbedHelpers()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{} // every helper cilium/ebpf knows
	for i := range 1024 {
		if fn := asm.BuiltinFunc(i); !strings.HasPrefix(fn.String(), "BuiltinFunc(") {
			known[loader.HelperName(fn)] = true
		}
	}
	if !known["bpf_ktime_get_tai_ns"] || !known["bpf_xdp_load_bytes"] {
		t.Fatalf("helper names do not convert: %v", known)
	}
	srcs, _ := filepath.Glob("../bpf/*.c")
	hdrs, _ := filepath.Glob("../bpf/include/*.h")
	call := regexp.MustCompile(`\bbpf_[a-z0-9_]+\(`)
	seen := 0
	for _, f := range append(srcs, hdrs...) {
		if strings.HasSuffix(f, "test.c") || slices.Contains(optionalObjects, filepath.Base(f)) {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllString(string(b), -1) {
			name := strings.TrimSuffix(m, "(")
			switch {
			case slices.Contains(notHelpers, name):
			case !known[name]:
				t.Errorf("%s calls %s: neither a helper nor a known macro (add it to notHelpers if it is a macro)", f, name)
			case !slices.Contains(probed, name):
				t.Errorf("%s calls helper %s, which tandem probe does not check", f, name)
			default:
				seen++
			}
		}
	}
	if seen == 0 {
		t.Fatal("no helper call found in ../bpf: the test reads the wrong files")
	}
}
