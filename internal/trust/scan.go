package trust

import (
	"bytes"
	"context"
	"crypto/md5" //nolint:gosec // dpkg records MD5; it is compared, never trusted alone
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// What a scan records. A file is code when it is a regular file with an
// exec bit, or a regular file that starts with an ELF header ("\x7fELF",
// which covers shared objects mapped by the loader without an exec bit) or
// with "#!" (a script). Other regular files are remembered as "not code"
// (so a re-scan does not open them again) and trust nothing.

// ScanOptions configure Scan.
type ScanOptions struct {
	// Workers hash files in parallel; 0: GOMAXPROCS.
	Workers int
	// Progress, when set, receives progress: a progress bar when it is a
	// terminal, else a line every ProgressInterval.
	Progress io.Writer
	// ProgressInterval is the period of plain progress lines; 0: 5 s.
	ProgressInterval time.Duration
	// Dpkg, when set, gives files dpkg installed, unmodified, the source
	// "dpkg:PACKAGE".
	Dpkg *DpkgIndex
	// DpkgFiles scans every file Dpkg lists, in addition to the paths.
	DpkgFiles bool
}

// ScanStats say what a scan did.
type ScanStats struct {
	Code         int   // code files under the paths (hashed or unchanged)
	Hashed       int   // files read and hashed (new or changed)
	Unchanged    int   // code files skipped: same dev, inode, size, mtime and ctime as recorded
	NotCode      int   // regular files that are not code
	Removed      int   // entries of files no longer there, removed
	Dpkg         int   // hashed files whose content is what dpkg installed
	DpkgMismatch int   // hashed files dpkg lists whose content differs from dpkg's record
	Bytes        int64 // bytes hashed
	// Problems are files and directories that could not be read (the scan
	// goes on without them); at most maxProblems are kept, ProblemCount
	// counts them all.
	Problems     []error
	ProblemCount int
}

const (
	maxProblems = 100
	// racyWindow: a file changed this close to the moment it was read may
	// change again without its mtime or ctime moving (coarse timestamps),
	// so it is not skipped by the next scan.
	racyWindow = 50 * time.Millisecond
	batchRows  = 512
)

func (s *ScanStats) problem(err error) {
	s.ProblemCount++
	if len(s.Problems) < maxProblems {
		s.Problems = append(s.Problems, err)
	}
}

// fileStat is the identity a re-scan compares.
type fileStat struct {
	dev, ino, size, mtime, ctime int64
}

func statOf(st *syscall.Stat_t) fileStat {
	return fileStat{
		dev: int64(st.Dev), ino: int64(st.Ino), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
}

type fileRow struct {
	stat       fileStat
	code       bool
	dpkgListed bool
}

type scanJob struct {
	path string
	stat fileStat
	mode fs.FileMode
}

type scanResult struct {
	path   string
	stat   fileStat
	code   bool
	sha    [32]byte
	source string
	bytes  int64
	listed bool // dpkg lists it
	dpkgNo bool // dpkg lists it, content differs
	err    error
}

// Scan records the code under paths (directories are walked, files taken
// as they are) in the trust database: see the package doc for what is
// code. It hashes files in parallel, skips files whose dev, inode, size,
// mtime and ctime are as recorded (a re-scan reads only what changed),
// removes the entries of files under paths that are gone, never follows a
// symlink inside a tree (a path given as a symlink is resolved), and does
// not descend into pseudo filesystems (proc, sysfs, cgroup, ...). Files
// that cannot be read are reported in ScanStats.Problems; the error is for
// what stops the scan (the database, ctx).
func Scan(ctx context.Context, db *DB, paths []string, opt ScanOptions) (ScanStats, error) {
	var st ScanStats
	workers := opt.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	rows, err := db.fileRows(ctx)
	if err != nil {
		return st, err
	}

	// Roots: directories (walked; their entries are theirs) and single
	// files. A path that is gone removes what was recorded under it.
	dirRoots := map[string]bool{}
	fileRoots := map[string]bool{}
	var walkRoots []string
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return st, fmt.Errorf("scan %s: %w", p, err)
		}
		real, err := filepath.EvalSymlinks(abs)
		if errors.Is(err, fs.ErrNotExist) {
			dirRoots[abs] = true
			st.problem(fmt.Errorf("%s: does not exist", p))
			continue
		}
		if err != nil {
			return st, fmt.Errorf("scan %s: %w", p, err)
		}
		if !dirRoots[real] {
			dirRoots[real] = true
			walkRoots = append(walkRoots, real)
		}
	}
	if opt.DpkgFiles && opt.Dpkg != nil {
		for _, p := range opt.Dpkg.Paths() {
			fileRoots[p] = true
		}
	}
	underRoot := func(p string) bool {
		if fileRoots[p] {
			return true
		}
		for d := p; ; d = filepath.Dir(d) {
			if dirRoots[d] {
				return true
			}
			if d == "/" || d == "." {
				return false
			}
		}
	}

	// Walk: find regular files; keep those that changed.
	seen := map[string]bool{}
	var jobs []scanJob
	var total int64
	consider := func(path string, info fs.FileInfo) {
		if seen[path] {
			return
		}
		seen[path] = true
		sys, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return
		}
		fst := statOf(sys)
		if r, ok := rows[path]; ok && r.stat == fst && !dpkgStale(opt.Dpkg, path, r) {
			if r.code {
				st.Code++
				st.Unchanged++
			} else {
				st.NotCode++
			}
			return
		}
		jobs = append(jobs, scanJob{path: path, stat: fst, mode: info.Mode()})
		total += fst.size
	}
	if opt.Progress != nil {
		what := strings.Join(walkRoots, " ")
		if len(fileRoots) > 0 {
			what = strings.TrimSpace(fmt.Sprintf("%s and %d files dpkg lists", what, len(fileRoots)))
		}
		fmt.Fprintf(opt.Progress, "trust scan: looking for code under %s\n", what)
	}
	for _, root := range walkRoots {
		if err := walk(ctx, root, consider, &st); err != nil {
			return st, err
		}
	}
	for p := range fileRoots {
		if dirRoots[p] || seen[p] {
			continue
		}
		info, err := os.Lstat(p)
		if err != nil {
			continue // a file dpkg lists and that is gone: its entry is removed below
		}
		if info.Mode().IsRegular() {
			consider(p, info)
		}
	}

	prog := newProgress(opt.Progress, opt.ProgressInterval, len(jobs), total, st.Unchanged+st.NotCode)
	defer prog.done()

	// Hash in parallel; write in batches from this goroutine.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobc := make(chan scanJob)
	resc := make(chan scanResult, 4*workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range jobc {
				r := hashJob(j, opt.Dpkg, buf)
				select {
				case resc <- r:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		defer close(jobc)
		for _, j := range jobs {
			select {
			case jobc <- j:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(resc) }()

	var batch []scanResult
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := db.writeScan(ctx, batch, nil)
		batch = batch[:0]
		return err
	}
	for r := range resc {
		prog.add(r.bytes)
		switch {
		case r.err != nil:
			st.problem(r.err)
			delete(seen, r.path) // stale: its entry goes
			continue
		case !r.code:
			st.NotCode++
		default:
			st.Code++
			st.Hashed++
			st.Bytes += r.bytes
			if strings.HasPrefix(r.source, "dpkg:") {
				st.Dpkg++
			}
			if r.dpkgNo {
				st.DpkgMismatch++
			}
		}
		batch = append(batch, r)
		if len(batch) >= batchRows {
			if err := flush(); err != nil {
				return st, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if err := flush(); err != nil {
		return st, err
	}

	var gone []string
	for p := range rows {
		if !seen[p] && underRoot(p) {
			gone = append(gone, p)
		}
	}
	if len(gone) > 0 {
		if err := db.writeScan(ctx, nil, gone); err != nil {
			return st, err
		}
		st.Removed = len(gone)
	}
	return st, nil
}

// dpkgStale: the recorded source no longer agrees with what dpkg lists, so
// an unchanged file is hashed again (e.g. the first scan ran without dpkg).
func dpkgStale(ix *DpkgIndex, path string, r fileRow) bool {
	return ix != nil && r.code && ix.Listed(path) != r.dpkgListed
}

// pseudoFS are filesystems a scan does not descend into.
var pseudoFS = map[int64]bool{
	unix.PROC_SUPER_MAGIC: true, unix.SYSFS_MAGIC: true, unix.DEVPTS_SUPER_MAGIC: true,
	unix.CGROUP_SUPER_MAGIC: true, unix.CGROUP2_SUPER_MAGIC: true, unix.DEBUGFS_MAGIC: true,
	unix.TRACEFS_MAGIC: true, unix.SECURITYFS_MAGIC: true, unix.BPF_FS_MAGIC: true,
	unix.PSTOREFS_MAGIC: true, unix.EFIVARFS_MAGIC: true, unix.BINFMTFS_MAGIC: true,
	0x62656570: true, // configfs
	0x19800202: true, // mqueue
}

func walk(ctx context.Context, root string, consider func(string, fs.FileInfo), st *ScanStats) error {
	devs := map[string]uint64{}
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			st.problem(err)
			if d != nil && d.IsDir() && path != root {
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir():
			info, err := d.Info()
			if err != nil {
				st.problem(err)
				return fs.SkipDir
			}
			sys := info.Sys().(*syscall.Stat_t)
			devs[path] = sys.Dev
			if parent, ok := devs[filepath.Dir(path)]; !ok || parent != sys.Dev {
				var sfs unix.Statfs_t
				if unix.Statfs(path, &sfs) == nil && pseudoFS[int64(sfs.Type)] {
					return fs.SkipDir
				}
			}
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					st.problem(err)
				}
				return nil
			}
			consider(path, info)
		}
		return nil // symlinks, devices, sockets, fifos: not followed, not code
	})
}

// isCodeHeader reports whether a file's first bytes make it code.
func isCodeHeader(b []byte) bool {
	return bytes.HasPrefix(b, []byte("\x7fELF")) || bytes.HasPrefix(b, []byte("#!"))
}

func hashJob(j scanJob, ix *DpkgIndex, buf []byte) scanResult {
	r := scanResult{path: j.path}
	f, err := os.OpenFile(j.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	if err != nil {
		r.err = err
		return r
	}
	defer f.Close()
	var before syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &before); err != nil {
		r.err = fmt.Errorf("%s: %w", j.path, err)
		return r
	}
	if before.Mode&syscall.S_IFMT != syscall.S_IFREG {
		r.err = fmt.Errorf("%s: no longer a regular file", j.path)
		return r
	}
	readAt := time.Now()
	r.stat = statOf(&before)
	hdr := buf[:4]
	n, err := io.ReadFull(f, hdr)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		r.err = fmt.Errorf("%s: %w", j.path, err)
		return r
	}
	hdr = hdr[:n]
	r.code = before.Mode&0o111 != 0 || isCodeHeader(hdr)
	if !r.code {
		r.bytes = r.stat.size // counted as done for the progress
		return r
	}
	sh := sha256.New()
	var mh hash.Hash
	listed := ix != nil && ix.Listed(j.path)
	r.listed = listed
	w := io.Writer(sh)
	if listed {
		mh = md5.New() //nolint:gosec // compared with dpkg's record
		w = io.MultiWriter(sh, mh)
	}
	w.Write(hdr) //nolint:errcheck // hashes do not fail
	m, err := io.CopyBuffer(w, onlyReader{f}, buf[4:])
	if err != nil {
		r.err = fmt.Errorf("%s: %w", j.path, err)
		return r
	}
	r.bytes = int64(n) + m
	var after syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &after); err != nil {
		r.err = fmt.Errorf("%s: %w", j.path, err)
		return r
	}
	if statOf(&after) != r.stat || r.bytes != r.stat.size {
		r.err = fmt.Errorf("%s: changed while it was read", j.path)
		return r
	}
	copy(r.sha[:], sh.Sum(nil))
	r.source = "database"
	if listed {
		var sum [16]byte
		copy(sum[:], mh.Sum(nil))
		if pkg, ok := ix.Match(j.path, sum); ok {
			r.source = "dpkg:" + pkg
		} else {
			r.dpkgNo = true
		}
	}
	if racy := readAt.Add(-racyWindow).UnixNano(); r.stat.ctime > racy || r.stat.mtime > racy {
		r.stat.ctime = -1 // never equal: the next scan reads it again
	}
	return r
}

// onlyReader hides *os.File's WriterTo/ReaderFrom so CopyBuffer uses buf.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// HashFile returns the SHA-256 of the file at path.
func HashFile(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	sum, _, err := HashReader(f)
	if err != nil {
		return sum, fmt.Errorf("%s: %w", path, err)
	}
	return sum, nil
}

// HashReader returns the SHA-256 of what r yields, and its length.
func HashReader(r io.Reader) ([32]byte, int64, error) {
	var sum [32]byte
	h := sha256.New()
	n, err := io.CopyBuffer(h, onlyReader{r}, make([]byte, 1<<20))
	if err != nil {
		return sum, n, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}

// HashFD returns the SHA-256 of the whole file open as fd (for example the
// descriptor of a fanotify event), read with pread from offset 0: the
// descriptor's offset is left as it is and fd is not closed. Hash what the
// kernel handed over rather than a path, which may name another file by
// the time it is opened.
func HashFD(fd int) ([32]byte, error) {
	var sum [32]byte
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; {
		n, err := unix.Pread(fd, buf, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return sum, fmt.Errorf("hash fd %d: %w", fd, err)
		}
		if n == 0 {
			break
		}
		h.Write(buf[:n])
		off += int64(n)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// fileRows reads every recorded file.
func (db *DB) fileRows(ctx context.Context) (map[string]fileRow, error) {
	rows, err := db.db.QueryContext(ctx,
		`SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha IS NOT NULL, dpkg FROM files`)
	if err != nil {
		return nil, fmt.Errorf("trust scan: %w", err)
	}
	defer rows.Close()
	out := map[string]fileRow{}
	for rows.Next() {
		var (
			p string
			r fileRow
		)
		if err := rows.Scan(&p, &r.stat.dev, &r.stat.ino, &r.stat.size, &r.stat.mtime, &r.stat.ctime, &r.code, &r.dpkgListed); err != nil {
			return nil, fmt.Errorf("trust scan: %w", err)
		}
		out[p] = r
	}
	return out, rows.Err()
}

// writeScan records results and removes the entries of gone files, in one
// transaction.
func (db *DB) writeScan(ctx context.Context, results []scanResult, gone []string) error {
	return db.write(ctx, "trust scan: record files", func(tx *sql.Tx) error {
		now := time.Now().UnixNano()
		if len(results) > 0 {
			up, err := tx.PrepareContext(ctx, `INSERT INTO files (path, dev, ino, size, mtime_ns, ctime_ns, sha, source, dpkg, time_ns)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (path) DO UPDATE SET dev = excluded.dev, ino = excluded.ino, size = excluded.size,
					mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, sha = excluded.sha,
					source = excluded.source, dpkg = excluded.dpkg, time_ns = excluded.time_ns`)
			if err != nil {
				return err
			}
			defer up.Close()
			for _, r := range results {
				var sha any
				if r.code {
					sha = r.sha[:]
				}
				if _, err := up.ExecContext(ctx, r.path, r.stat.dev, r.stat.ino, r.stat.size,
					r.stat.mtime, r.stat.ctime, sha, r.source, r.listed, now); err != nil {
					return err
				}
			}
		}
		if len(gone) > 0 {
			del, err := tx.PrepareContext(ctx, `DELETE FROM files WHERE path = ?`)
			if err != nil {
				return err
			}
			defer del.Close()
			for _, p := range gone {
				if _, err := del.ExecContext(ctx, p); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// File is a scanned file that is code, with the identity it had when it
// was hashed. Dev is st_dev as stat(2) gives it (the userspace encoding,
// not the kernel's s_dev). CtimeNS is -1 for a file changed just before it
// was read (a re-scan reads it again).
type File struct {
	Path                   string
	SHA                    [32]byte
	Source                 string // "database" or "dpkg:PACKAGE"
	Dev, Ino               uint64
	Size, MtimeNS, CtimeNS int64
}

// Files calls fn for every scanned code file, by path; sha, when not nil,
// selects the files with that content. fn must not write to db. The agent
// can use the identities to seed a verdict cache keyed by file identity,
// after checking that the file still has them.
func (db *DB) Files(ctx context.Context, sha *[32]byte, fn func(File) error) error {
	const cols = `SELECT path, sha, source, dev, ino, size, mtime_ns, ctime_ns FROM files `
	q, args := cols+`WHERE sha IS NOT NULL ORDER BY path`, []any(nil)
	if sha != nil {
		q, args = cols+`WHERE sha = ? ORDER BY path`, []any{sha[:]}
	}
	rows, err := db.db.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("trust files: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			f        File
			b        []byte
			dev, ino int64
		)
		if err := rows.Scan(&f.Path, &b, &f.Source, &dev, &ino, &f.Size, &f.MtimeNS, &f.CtimeNS); err != nil {
			return fmt.Errorf("trust files: %w", err)
		}
		copy(f.SHA[:], b)
		f.Dev, f.Ino = uint64(dev), uint64(ino)
		if err := fn(f); err != nil {
			return err
		}
	}
	return rows.Err()
}
