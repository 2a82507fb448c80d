package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// modIndex maps module names to their .ko files in one kernel's module
// tree, and reads dependencies from each module's .modinfo section, so no
// depmod (or modules.dep) is needed.
type modIndex struct {
	dir   string            // .../lib/modules/RELEASE
	paths map[string]string // normalized name -> path
}

func normMod(name string) string {
	name = strings.TrimSuffix(filepath.Base(name), ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

func indexModules(dir string) (*modIndex, error) {
	ix := &modIndex{dir: dir, paths: map[string]string{}}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			ix.paths[normMod(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	return ix, nil
}

// builtin reports whether the kernel has name built in.
func (ix *modIndex) builtin(name string) bool {
	data, err := os.ReadFile(filepath.Join(ix.dir, "modules.builtin"))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if normMod(l) == name {
			return true
		}
	}
	return false
}

func moduleDeps(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// resolve returns the files to load for names, dependencies first, each
// once. Built-in modules are skipped; unknown names are an error unless
// optional.
func (ix *modIndex) resolve(names []string, optional bool) ([]string, []string, error) {
	var (
		order   []string
		missing []string
		seen    = map[string]bool{}
	)
	var visit func(n string) error
	visit = func(n string) error {
		n = normMod(n)
		if seen[n] {
			return nil
		}
		seen[n] = true
		p, ok := ix.paths[n]
		if !ok {
			if ix.builtin(n) {
				return nil
			}
			if optional {
				missing = append(missing, n)
				return nil
			}
			return fmt.Errorf("module %s: not in %s", n, ix.dir)
		}
		deps, err := moduleDeps(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, nil, err
		}
	}
	return order, missing, nil
}
