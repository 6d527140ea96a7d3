package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Kernel modules for the guest. Debian's kernel packages ship no
// modules.dep (depmod runs at install time) and 6.12's modules are
// xz-compressed, so vmtest resolves dependencies itself from each module's
// .modinfo section, decompresses on the host and writes a modules.dep for
// the modules it included. Busybox modprobe and plain finit_module(2) then
// both work in the guest.

var moduleExts = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// moduleName normalizes a module's name as the kernel does ("-" = "_").
func moduleName(s string) string {
	s = path.Base(s)
	for _, ext := range moduleExts {
		if strings.HasSuffix(s, ext) {
			s = strings.TrimSuffix(s, ext)
			break
		}
	}
	return strings.ReplaceAll(s, "-", "_")
}

// indexModules maps module name → path relative to modDir.
func indexModules(modDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !slices.ContainsFunc(moduleExts, func(e string) bool { return strings.HasSuffix(p, e) }) {
			return nil
		}
		rel, err := filepath.Rel(modDir, p)
		if err != nil {
			return err
		}
		idx[moduleName(p)] = filepath.ToSlash(rel)
		return nil
	})
	return idx, err
}

// readModule returns the uncompressed contents of a module file.
func readModule(p string) ([]byte, error) {
	switch {
	case strings.HasSuffix(p, ".ko.xz"):
		return decompressCmd(p, "xz")
	case strings.HasSuffix(p, ".ko.zst"):
		return decompressCmd(p, "zstd")
	case strings.HasSuffix(p, ".ko.gz"):
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return io.ReadAll(zr)
	}
	return os.ReadFile(p)
}

func decompressCmd(p, tool string) ([]byte, error) {
	out, err := exec.Command(tool, "-dc", p).Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc %s: %w (install %s)", tool, p, err, tool)
	}
	return out, nil
}

// modinfoDepends returns the depends= list from a module's .modinfo.
func modinfoDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	return parseModinfoDepends(data), nil
}

func parseModinfoDepends(modinfo []byte) []string {
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, moduleName(d))
				}
			}
			return deps
		}
	}
	return nil
}

// addModules adds the named modules and everything they depend on, at
// /lib/modules/<release>/<same relative path>.ko, and a modules.dep that
// lists them. Decompressed copies are written under work. It returns the
// names added, dependencies included.
func (a *archive) addModules(k Kernel, names []string, work string) ([]string, error) {
	if len(names) == 0 {
		return nil, nil
	}
	idx, err := indexModules(k.Modules)
	if err != nil {
		return nil, fmt.Errorf("index modules of %s: %w", k.Release, err)
	}
	guestDir := "/lib/modules/" + k.Release
	type mod struct {
		rel  string // in the guest, uncompressed
		deps []string
	}
	mods := map[string]*mod{}
	var order []string // dependencies before dependents
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if _, ok := mods[name]; ok {
			return nil
		}
		if slices.Contains(stack, name) {
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(stack, name), " -> "))
		}
		rel, ok := idx[name]
		if !ok {
			return fmt.Errorf("kernel %s has no module %q (built in, or misspelled? see %s)", k.Release, name, filepath.Join(k.Modules, "modules.builtin"))
		}
		ko, err := readModule(filepath.Join(k.Modules, rel))
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(ko)
		if err != nil {
			return fmt.Errorf("module %s: %w", rel, err)
		}
		for _, d := range deps {
			if err := visit(d, append(stack, name)); err != nil {
				return err
			}
		}
		plain := strings.TrimSuffix(rel, path.Ext(rel))
		if !strings.HasSuffix(plain, ".ko") {
			plain = rel // was not compressed
		}
		host := filepath.Join(work, "modules", filepath.FromSlash(plain))
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(host, ko, 0o644); err != nil {
			return err
		}
		if err := a.file(guestDir+"/"+plain, host); err != nil {
			return err
		}
		mods[name] = &mod{rel: plain, deps: deps}
		order = append(order, name)
		return nil
	}
	for _, n := range names {
		if err := visit(moduleName(n), nil); err != nil {
			return nil, err
		}
	}
	// modules.dep: each module, then all it needs transitively, listed so
	// that the last one is loaded first (depmod's order).
	var dep strings.Builder
	for _, name := range order {
		var all []string
		var walk func(string)
		walk = func(n string) {
			for _, d := range mods[n].deps {
				if !slices.Contains(all, mods[d].rel) {
					all = append(all, mods[d].rel)
					walk(d)
				}
			}
		}
		walk(name)
		fmt.Fprintf(&dep, "%s:", mods[name].rel)
		for _, r := range all {
			fmt.Fprintf(&dep, " %s", r)
		}
		dep.WriteString("\n")
	}
	if err := a.bytes(guestDir+"/modules.dep", 0o644, []byte(dep.String())); err != nil {
		return nil, err
	}
	for _, f := range []string{"modules.builtin", "modules.order"} {
		if _, err := os.Stat(filepath.Join(k.Modules, f)); err == nil {
			if err := a.file(guestDir+"/"+f, filepath.Join(k.Modules, f)); err != nil {
				return nil, err
			}
		}
	}
	return order, nil
}
