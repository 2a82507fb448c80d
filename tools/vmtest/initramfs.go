package main

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
)

// bootModules are what the guest needs before it can mount its root: the
// virtio PCI transport, 9p over virtio, and overlayfs.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// buildInitramfs writes a newc cpio holding this binary as /init and the
// boot modules of k with their dependencies, in load order.
func buildInitramfs(k *kernel, out string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	f, err := elf.Open(self)
	if err != nil {
		return fmt.Errorf("read own binary: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			f.Close()
			return errNotStatic
		}
	}
	f.Close()
	ix, err := indexModules(k.ModulesDir)
	if err != nil {
		return err
	}
	mods, _, err := ix.resolve(bootModules, false)
	if err != nil {
		return fmt.Errorf("boot modules: %w", err)
	}

	file, err := os.Create(out)
	if err != nil {
		return err
	}
	defer file.Close()
	w := cpio.NewWriter(file)
	now := time.Now()
	dir := func(name string) error {
		return w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeDir | 0o755, ModTime: now, Links: 2})
	}
	add := func(name, src string, mode cpio.FileMode) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: int64(len(data)), ModTime: now, Links: 1}); err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "modules"} {
		if err := dir(d); err != nil {
			return err
		}
	}
	if err := add("init", self, 0o755); err != nil {
		return err
	}
	var order []string
	for _, m := range mods {
		name := filepath.Base(m)
		if err := add("modules/"+name, m, 0o644); err != nil {
			return err
		}
		order = append(order, name)
	}
	list := strings.Join(order, "\n") + "\n"
	if err := w.WriteHeader(&cpio.Header{Name: "modules/order", Mode: cpio.TypeReg | 0o644, Size: int64(len(list)), ModTime: now, Links: 1}); err != nil {
		return err
	}
	if _, err := w.Write([]byte(list)); err != nil {
		return err
	}
	return w.Close()
}
