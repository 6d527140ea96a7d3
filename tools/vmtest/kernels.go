package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// kernelMeta maps the short kernel names used on the command line to the
// Debian metapackage whose dependency is the kernel image to test.
var kernelMeta = map[string]string{
	"6.1":  "linux-image-amd64",
	"6.12": "linux-image-6.12-amd64",
}

func knownKernels() []string {
	var ks []string
	for k := range kernelMeta {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Kernel is one unpacked kernel image in the cache.
type Kernel struct {
	Name    string `json:"name"`    // short name: "6.1"
	Package string `json:"package"` // linux-image-6.1.0-56-amd64
	Version string `json:"version"` // Debian version of Package
	Release string `json:"release"` // uname -r
	Dir     string `json:"dir"`     // holds boot/ and lib/modules/
	Vmlinuz string `json:"vmlinuz"`
	// Vmlinux is the uncompressed kernel, extracted from Vmlinuz, that qemu
	// boots through its PVH entry point; empty when extraction failed.
	Vmlinux string `json:"vmlinux,omitempty"`
	Modules string `json:"modules"` // lib/modules/<release>
}

func (k Kernel) valid() bool {
	if k.Vmlinuz == "" || k.Modules == "" {
		return false
	}
	for _, p := range []string{k.Vmlinuz, k.Modules, k.Vmlinux} {
		if p != "" && !fileExists(p) {
			return false
		}
	}
	return true
}

func defaultCacheDir() string {
	if d := os.Getenv("VIGIL_VM_CACHE"); d != "" {
		return d
	}
	return "/var/cache/vigil-vmtest"
}

// kernelCache is the directory kernels are kept in, outside the repository.
// Layout: <name>.json is the index for a short name; <package>_<version>/
// holds that package's boot/ and lib/modules/; .lock serializes changes.
type kernelCache struct {
	dir string
	log io.Writer // progress messages
}

// lock takes the cache's exclusive lock, creating the cache if needed.
func (c kernelCache) lock() (unlock func(), err error) {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache %s: %w (set VIGIL_VM_CACHE or -cache to a writable directory outside the repository)", c.dir, err)
	}
	f, err := os.OpenFile(filepath.Join(c.dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kernel cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("kernel cache lock: %w", err)
	}
	return func() { f.Close() }, nil
}

func (c kernelCache) indexPath(name string) string {
	return filepath.Join(c.dir, name+".json")
}

func (c kernelCache) readIndex(name string) (Kernel, bool) {
	b, err := os.ReadFile(c.indexPath(name))
	if err != nil {
		return Kernel{}, false
	}
	var k Kernel
	if json.Unmarshal(b, &k) != nil || !k.valid() {
		return Kernel{}, false
	}
	return k, true
}

func (c kernelCache) writeIndex(k Kernel) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	tmp := c.indexPath(k.Name) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.indexPath(k.Name))
}

// get returns the cached kernels for names. With refresh, or when a name
// has nothing cached, it asks apt which package the name means now (one
// apt-cache call for all names: each takes about a second here) and fetches
// and unpacks that package if it is not cached yet. Without refresh, cached
// kernels are returned without running apt at all.
func (c kernelCache) get(ctx context.Context, names []string, refresh bool) ([]Kernel, error) {
	for _, name := range names {
		if _, ok := kernelMeta[name]; !ok {
			return nil, fmt.Errorf("unknown kernel %q (known: %s)", name, strings.Join(knownKernels(), ", "))
		}
	}
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	out := make([]Kernel, len(names))
	var todo []int
	for i, name := range names {
		k, ok := c.readIndex(name)
		if ok && !refresh {
			out[i] = k
			continue
		}
		todo = append(todo, i)
	}
	if len(todo) == 0 {
		return out, nil
	}
	c.removeStaleTemps()
	var metas []string
	for _, i := range todo {
		metas = append(metas, kernelMeta[names[i]])
	}
	resolved, err := resolveKernelPackages(ctx, metas, c.log)
	if err != nil {
		return nil, err
	}
	for _, i := range todo {
		name := names[i]
		pv := resolved[kernelMeta[name]]
		dir := filepath.Join(c.dir, sanitize(pv.pkg+"_"+pv.version))
		k, err := inspectUnpacked(dir)
		if err != nil {
			if err := c.fetch(ctx, pv.pkg, pv.version, dir); err != nil {
				return nil, fmt.Errorf("kernel %s (%s %s): %w", name, pv.pkg, pv.version, err)
			}
			if k, err = inspectUnpacked(dir); err != nil {
				return nil, fmt.Errorf("kernel %s (%s %s): %w", name, pv.pkg, pv.version, err)
			}
		}
		if k.Vmlinux == "" {
			vmlinux := filepath.Join(dir, "boot", "vmlinux-"+k.Release)
			if err := extractVmlinux(ctx, k.Vmlinuz, vmlinux); err != nil {
				fmt.Fprintf(c.log, "vmtest: warning: kernel %s will boot the slow way (compressed bzImage): %v\n", name, err)
			} else {
				k.Vmlinux = vmlinux
			}
		}
		k.Name, k.Package, k.Version = name, pv.pkg, pv.version
		if err := c.writeIndex(k); err != nil {
			return nil, fmt.Errorf("kernel %s: write index: %w", name, err)
		}
		out[i] = k
	}
	return out, nil
}

// removeStaleTemps removes half-unpacked directories left by a run that
// was killed. Callers hold the lock, so no other run is using them.
func (c kernelCache) removeStaleTemps() {
	ents, _ := os.ReadDir(c.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.RemoveAll(filepath.Join(c.dir, e.Name()))
		}
	}
}

// fetch downloads pkg with apt-get download, unpacks it with dpkg -x and
// keeps boot/ and lib/modules/ in dir.
func (c kernelCache) fetch(ctx context.Context, pkg, version, dir string) error {
	tmp, err := os.MkdirTemp(c.dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// apt-get download drops privileges to _apt when it can; let it write.
	os.Chmod(tmp, 0o777)

	spec := pkg
	if version != "" {
		spec = pkg + "=" + version
	}
	fmt.Fprintf(c.log, "vmtest: downloading %s\n", spec)
	if out, err := runCmd(ctx, tmp, "apt-get", "download", spec); err != nil {
		return fmt.Errorf("apt-get download %s: %w\n%s", spec, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: expected one .deb in %s, found %d", spec, tmp, len(debs))
	}
	root := filepath.Join(tmp, "root")
	fmt.Fprintf(c.log, "vmtest: unpacking %s\n", filepath.Base(debs[0]))
	if out, err := runCmd(ctx, tmp, "dpkg", "-x", debs[0], root); err != nil {
		return fmt.Errorf("dpkg -x %s: %w\n%s", debs[0], err, out)
	}
	keep := filepath.Join(tmp, "keep")
	if err := os.MkdirAll(filepath.Join(keep, "lib"), 0o755); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(root, "boot"), filepath.Join(keep, "boot")); err != nil {
		return fmt.Errorf("package has no boot/: %w", err)
	}
	// Debian 12 is merged-/usr but kernel packages still ship lib/modules.
	mods := filepath.Join(root, "lib", "modules")
	if _, err := os.Stat(mods); err != nil {
		mods = filepath.Join(root, "usr", "lib", "modules")
	}
	if err := os.Rename(mods, filepath.Join(keep, "lib", "modules")); err != nil {
		return fmt.Errorf("package has no lib/modules/: %w", err)
	}
	if _, err := inspectUnpacked(keep); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return os.Rename(keep, dir)
}

// inspectUnpacked finds the kernel image and module directory in dir.
func inspectUnpacked(dir string) (Kernel, error) {
	imgs, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return Kernel{}, fmt.Errorf("%s: expected one boot/vmlinuz-*, found %d", dir, len(imgs))
	}
	release := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", release)
	if st, err := os.Stat(mods); err != nil || !st.IsDir() {
		return Kernel{}, fmt.Errorf("%s: no lib/modules/%s", dir, release)
	}
	k := Kernel{Release: release, Dir: dir, Vmlinuz: imgs[0], Modules: mods}
	if p := filepath.Join(dir, "boot", "vmlinux-"+release); fileExists(p) {
		k.Vmlinux = p
	}
	return k, nil
}

type pkgVersion struct{ pkg, version string }

// resolveKernelPackages asks apt which kernel image package each
// metapackage depends on and which version apt would fetch. If apt does not
// know them (no package lists yet), it runs apt-get update once and asks
// again.
func resolveKernelPackages(ctx context.Context, metas []string, log io.Writer) (map[string]pkgVersion, error) {
	for attempt := 0; ; attempt++ {
		res, err := aptResolve(ctx, metas)
		if err == nil || attempt > 0 {
			return res, err
		}
		fmt.Fprintf(log, "vmtest: %v; running apt-get update\n", err)
		if out, uerr := runCmd(ctx, "", "apt-get", "update"); uerr != nil {
			return nil, fmt.Errorf("%w; apt-get update failed too (are you root?): %v\n%s", err, uerr, out)
		}
	}
}

func aptResolve(ctx context.Context, metas []string) (map[string]pkgVersion, error) {
	out, err := runCmd(ctx, "", "apt-cache", append([]string{"depends"}, metas...)...)
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends %s: %w: %s", strings.Join(metas, " "), err, strings.TrimSpace(out))
	}
	deps := parseAptDepends(out)
	res := map[string]pkgVersion{}
	var pkgs []string
	for _, m := range metas {
		p := deps[m]
		if p == "" {
			return nil, fmt.Errorf("apt does not know which kernel %s depends on", m)
		}
		res[m] = pkgVersion{pkg: p}
		pkgs = append(pkgs, p)
	}
	out, err = runCmd(ctx, "", "apt-cache", append([]string{"policy"}, pkgs...)...)
	if err != nil {
		return nil, fmt.Errorf("apt-cache policy %s: %w: %s", strings.Join(pkgs, " "), err, strings.TrimSpace(out))
	}
	cands := parseAptCandidates(out)
	for m, pv := range res {
		pv.version = cands[pv.pkg]
		if pv.version == "" {
			return nil, fmt.Errorf("apt has no installable version of %s", pv.pkg)
		}
		res[m] = pv
	}
	return res, nil
}

// parseAptDepends maps each package in `apt-cache depends` output to the
// first linux-image-* package it depends on.
func parseAptDepends(out string) map[string]string {
	res := map[string]string{}
	cur := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' {
			cur = strings.TrimSpace(line)
			continue
		}
		f := strings.Fields(line)
		if cur != "" && res[cur] == "" && len(f) == 2 && strings.TrimPrefix(f[0], "|") == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			res[cur] = f[1]
		}
	}
	return res
}

// parseAptCandidates maps each package in `apt-cache policy` output to its
// Candidate version, leaving out packages without one.
func parseAptCandidates(out string) map[string]string {
	res := map[string]string{}
	cur := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' {
			cur = strings.TrimSuffix(strings.TrimSpace(line), ":")
			continue
		}
		f := strings.Fields(line)
		if cur != "" && len(f) == 2 && f[0] == "Candidate:" && f[1] != "(none)" {
			res[cur] = f[1]
		}
	}
	return res
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_', r == '+':
			return r
		}
		return '_'
	}, s)
}

func runCmd(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		err = fmt.Errorf("%w (vmtest needs Debian's apt and dpkg)", err)
	}
	return string(out), err
}

// cmdKernels implements `vmtest kernels`.
func cmdKernels(ctx context.Context, args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("kernels", flag.ContinueOnError)
	cache := fs.String("cache", defaultCacheDir(), "kernel cache directory, outside the repository ($VIGIL_VM_CACHE)")
	list := fs.String("kernels", strings.Join(knownKernels(), ","), "comma-separated kernels to fetch")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var names []string
	for _, name := range strings.Split(*list, ",") {
		if name = strings.TrimSpace(name); name != "" {
			names = append(names, name)
		}
	}
	c := kernelCache{dir: *cache, log: os.Stderr}
	ks, err := c.get(ctx, names, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest kernels: %v\n", err)
		return 1
	}
	for _, k := range ks {
		fmt.Fprintf(stdout, "vmtest: kernel %s: %s %s (release %s)\n  image:   %s\n", k.Name, k.Package, k.Version, k.Release, k.Vmlinuz)
		if k.Vmlinux != "" {
			fmt.Fprintf(stdout, "  vmlinux: %s (booted via PVH)\n", k.Vmlinux)
		}
		fmt.Fprintf(stdout, "  modules: %s\n", k.Modules)
	}
	return 0
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
