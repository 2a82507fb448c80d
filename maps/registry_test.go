package maps

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRegisterSynced: a registration is idempotent, and a second map with
// a taken id or name is refused (ids are part of the wire protocol).
func TestRegisterSynced(t *testing.T) {
	saved := slices.Clone(Synced)
	t.Cleanup(func() { Synced = saved })
	m := SyncedMap{ID: 30, Name: "lab_map"}
	RegisterSynced(m)
	RegisterSynced(m)
	if n := len(Synced) - len(saved); n != 1 {
		t.Fatalf("registered twice: %d new entries, want 1", n)
	}
	for _, clash := range []SyncedMap{{ID: 30, Name: "other"}, {ID: 31, Name: "lab_map"}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterSynced(%+v) after %+v: no panic", clash, m)
				}
			}()
			RegisterSynced(clash)
		}()
	}
}

func TestRegisterDump(t *testing.T) {
	t.Cleanup(func() { delete(dumpers, "lab_map") })
	if Dumper("lab_map") != nil || slices.Contains(Dumpable(), "lab_map") {
		t.Fatal("lab_map dumpable before it is registered")
	}
	RegisterDump("lab_map", func(Pins) (*Table, error) { return &Table{Map: "lab_map"}, nil })
	if Dumper("lab_map") == nil || !slices.Contains(Dumpable(), "lab_map") {
		t.Fatalf("lab_map not dumpable after RegisterDump: %v", Dumpable())
	}
}

// TestNoTestProgramInProduction: the production packages of the sync
// (maps, syncer) do not name the test-only synctest program's objects,
// so the sync plumbing works without it (bpf/sync.c holds the shared
// maps and types). Its map is registered by test and lab code.
func TestNoTestProgramInProduction(t *testing.T) {
	for _, dir := range []string{".", "../syncer", "../syncer/vip"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(token.NewFileSet(), f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok {
					if x, ok := sel.X.(*ast.Ident); ok && x.Name == "bpf" && strings.HasPrefix(sel.Sel.Name, "Synctest") {
						t.Errorf("%s uses bpf.%s: production code must not depend on the test program", f, sel.Sel.Name)
					}
				}
				return true
			})
		}
	}
}
