package loader

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
)

// The Go defaults are what the programs are built with, so a proxy loaded
// by up and one loaded by a test from the bare spec behave alike.
func TestProxyDefaultsMatchProgram(t *testing.T) {
	spec, err := bpf.LoadSynproxy()
	if err != nil {
		t.Fatal(err)
	}
	d := Defaults().Proxy
	for _, c := range []struct {
		name string
		want uint64
	}{
		{bpf.SynproxyVarCfgMss4, uint64(d.MSS4)}, {bpf.SynproxyVarCfgMss6, uint64(d.MSS6)},
		{bpf.SynproxyVarCfgSynRetryNs, uint64(d.SynRetry)}, {bpf.SynproxyVarCfgSynTries, uint64(d.SynTries)},
		{bpf.SynproxyVarCfgChallengeNs, uint64(d.ChallengeInterval)},
	} {
		if got := specVar(t, spec.Variables[c.name]); got != c.want {
			t.Errorf("%s: the program's default is %d, Defaults() says %d", c.name, got, c.want)
		}
	}
	// And setProxyConsts writes each setting where the program reads it.
	p := ProxyOptions{MSS4: 1400, MSS6: 1380, SynRetry: 2 * time.Second, SynTries: 6, ChallengeInterval: time.Second}
	if err := setProxyConsts(spec, p); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint64{bpf.SynproxyVarCfgMss4: 1400, bpf.SynproxyVarCfgMss6: 1380,
		bpf.SynproxyVarCfgSynRetryNs: uint64(2 * time.Second), bpf.SynproxyVarCfgSynTries: 6, bpf.SynproxyVarCfgChallengeNs: uint64(time.Second)} {
		if got := specVar(t, spec.Variables[name]); got != want {
			t.Errorf("%s: %d after setProxyConsts, want %d", name, got, want)
		}
	}
}

// specVar reads an unsigned load-time constant of any width.
func specVar(t *testing.T, v *ebpf.VariableSpec) uint64 {
	t.Helper()
	var b [8]byte
	if v.Size() > 8 {
		t.Fatalf("%s: %d bytes", v, v.Size())
	}
	if err := v.Get(b[:v.Size()]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}
