package trust

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultDpkgAdminDir is dpkg's database directory.
const DefaultDpkgAdminDir = "/var/lib/dpkg"

// DpkgIndex is what dpkg recorded about the files it installed: for every
// file listed in ADMINDIR/info/*.md5sums, its package and MD5. Paths are
// canonical: the directories dpkg names are resolved through symlinks, so
// on a merged-/usr system dpkg's "bin/ls" is found as /usr/bin/ls.
// Diversions and conffiles (which have no md5sums entry) are not
// considered.
type DpkgIndex struct {
	files map[string][]dpkgFile
}

type dpkgFile struct {
	pkg string
	md5 [16]byte
}

// LoadDpkg reads dpkg's md5sums files from adminDir (normally
// /var/lib/dpkg) for the system whose root is root (normally "/").
func LoadDpkg(adminDir, root string) (*DpkgIndex, error) {
	info := filepath.Join(adminDir, "info")
	lists, err := filepath.Glob(filepath.Join(info, "*.md5sums"))
	if err != nil {
		return nil, err
	}
	if len(lists) == 0 {
		if _, err := os.Stat(info); err != nil {
			return nil, fmt.Errorf("dpkg database: %w", err)
		}
	}
	ix := &DpkgIndex{files: map[string][]dpkgFile{}}
	dirs := map[string]string{} // dpkg's directory → canonical
	canon := func(rel string) string {
		p := filepath.Join(root, "/", rel)
		dir, base := filepath.Split(p)
		c, ok := dirs[dir]
		if !ok {
			c = filepath.Clean(dir)
			if r, err := filepath.EvalSymlinks(dir); err == nil {
				c = r
			}
			dirs[dir] = c
		}
		return filepath.Join(c, base)
	}
	for _, list := range lists {
		pkg := strings.TrimSuffix(filepath.Base(list), ".md5sums")
		pkg, _, _ = strings.Cut(pkg, ":") // multiarch: PKG:ARCH
		if err := ix.readList(list, pkg, canon); err != nil {
			return nil, err
		}
	}
	return ix, nil
}

func (ix *DpkgIndex) readList(list, pkg string, canon func(string) string) error {
	f, err := os.Open(list)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		sum, rel, ok := strings.Cut(line, " ")
		rel = strings.TrimLeft(rel, " ")
		var md5 [16]byte
		if !ok || rel == "" || len(sum) != 32 {
			return fmt.Errorf("%s:%d: want \"MD5  PATH\"", list, n)
		}
		if _, err := hex.Decode(md5[:], []byte(sum)); err != nil {
			return fmt.Errorf("%s:%d: MD5 %q is not hex", list, n, sum)
		}
		p := canon(rel)
		ix.files[p] = append(ix.files[p], dpkgFile{pkg: pkg, md5: md5})
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", list, err)
	}
	return nil
}

// Len is the number of files dpkg lists.
func (ix *DpkgIndex) Len() int { return len(ix.files) }

// Listed reports whether dpkg lists the file at the canonical path p.
func (ix *DpkgIndex) Listed(p string) bool {
	_, ok := ix.files[p]
	return ok
}

// Match returns the package that installed the file at canonical path p
// with this MD5, if any.
func (ix *DpkgIndex) Match(p string, md5 [16]byte) (pkg string, ok bool) {
	for _, f := range ix.files[p] {
		if f.md5 == md5 {
			return f.pkg, true
		}
	}
	return "", false
}

// Paths lists every file dpkg lists, sorted.
func (ix *DpkgIndex) Paths() []string {
	out := make([]string, 0, len(ix.files))
	for p := range ix.files {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
