package loader

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestESPDaemonOptions: the [esp] keys of the daemon's ESP side and
// their checks (a bad filter, source or safety factor is refused, naming
// the flag).
func TestESPDaemonOptions(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		err        string
		filter     string
		source     string
		safety     float64
	}{
		{"defaults", `[esp]
interfaces = ["eth0"]`, "", "", "", DefaultMarginSafety},
		{"all keys", `[esp]
interfaces = ["eth0"]
sa_filter = "spi=0xc0000000-0xcfffffff,dst=192.0.2.0/24"
source = "aevents"
margin_safety = 3.5`, "", "spi=0xc0000000-0xcfffffff,dst=192.0.2.0/24", ESPSourceAEvents, 3.5},
		{"bad filter", `[esp]
interfaces = ["eth0"]
sa_filter = "spi=5-1"`, "--esp-sa-filter", "", "", 0},
		{"bad source", `[esp]
interfaces = ["eth0"]
source = "polling"`, "--esp-source", "", "", 0},
		{"safety below 1", `[esp]
interfaces = ["eth0"]
margin_safety = 0.5`, "--esp-margin-safety", "", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "tandem.toml")
			if err := os.WriteFile(f, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			fc, err := ReadConfig(f)
			if err != nil {
				t.Fatal(err)
			}
			o := Defaults()
			if err := fc.Apply(&o); err != nil {
				t.Fatal(err)
			}
			err = o.Validate()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("validate: %v, want an error naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.ESP.SAFilter != tc.filter || o.ESP.Source != tc.source || o.ESP.Safety() != tc.safety {
				t.Fatalf("esp options %+v (safety %g)", o.ESP, o.ESP.Safety())
			}
		})
	}
}
