package bpfsensor

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/vigil-hips/vigil/internal/proc"
)

// benchRecord builds a ring buffer record from h and the string slots.
func benchRecord(tb testing.TB, h sensorEventHdr, slots ...[]byte) []byte {
	tb.Helper()
	var data []byte
	for i, s := range slots {
		if s == nil {
			continue
		}
		h.StrOff[i] = uint16(len(data))
		h.StrLen[i] = uint16(len(s))
		data = append(data, s...)
	}
	h.DataLen = uint32(len(data))
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, h); err != nil {
		tb.Fatal(err)
	}
	b.Write(data)
	return b.Bytes()
}

// leafFirst encodes p as the kernel does: components leaf first, each
// NUL-terminated.
func leafFirst(p string) []byte {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	var b []byte
	for i := len(parts) - 1; i >= 0; i-- {
		b = append(b, parts[i]...)
		b = append(b, 0)
	}
	return b
}

// benchRecords are the records one exec of a dynamically linked program
// makes on the tracepoint backend: fork, exec, image_load (libc), exit.
func benchRecords(tb testing.TB) map[string][]byte {
	base := sensorEventHdr{
		Seq: 1000, Ktime: 12_345_678_900, Pid: 4242, Tid: 4242, Ppid: 4100,
		Uid: 1000, Euid: 1000, Gid: 1000, StartTime: 12_000_000_000, CgroupId: 7777,
	}
	copy(base.Comm[:], []int8{'b', 'a', 's', 'h'})

	fork := base
	fork.Kind, fork.Hook, fork.Arg0 = sensorEventKindKIND_FORK, sensorEventHookHOOK_SCHED_FORK, 4243

	exec := base
	exec.Kind, exec.Hook = sensorEventKindKIND_EXEC, sensorEventHookHOOK_SCHED_EXEC
	exec.Pid, exec.Tid, exec.Ppid, exec.Dev, exec.Ino = 4243, 4243, 4242, 8<<20|1, 1_234_567
	copy(exec.Comm[:], []int8{'g', 'r', 'e', 'p', 0})
	argv := []byte("grep\x00--color=auto\x00-rn\x00TODO\x00/home/user/src/project\x00")

	image := base
	image.Kind, image.Hook = sensorEventKindKIND_IMAGE, sensorEventHookHOOK_TP_MMAP
	image.Pid, image.Tid, image.Ppid, image.Dev, image.Ino = 4243, 4243, 4242, 8<<20|1, 2_345_678
	image.Arg2, image.Arg3 = 5, 0x802 // PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_DENYWRITE

	exit := base
	exit.Kind, exit.Hook, exit.Pid, exit.Tid, exit.Ppid = sensorEventKindKIND_EXIT, sensorEventHookHOOK_SCHED_EXIT, 4243, 4243, 4242

	return map[string][]byte{
		"fork": benchRecord(tb, fork),
		"exec": benchRecord(tb, exec, leafFirst("/usr/bin/grep"), leafFirst("/home/user/src/project"),
			[]byte("/usr/bin/grep\x00"), argv),
		"image_load": benchRecord(tb, image, leafFirst("/usr/lib/x86_64-linux-gnu/libc.so.6")),
		"exit":       benchRecord(tb, exit),
	}
}

// BenchmarkDecode is the userspace cost of turning one record into an
// event, by kind.
func BenchmarkDecode(b *testing.B) {
	recs := benchRecords(b)
	d := &decoder{backend: "tracepoint"}
	for _, kind := range []string{"fork", "exec", "image_load", "exit"} {
		b.Run(kind, func(b *testing.B) {
			rec := recs[kind]
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.decode(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeTrack is decode plus the process cache (track: exec,
// fork, exit bookkeeping and the ancestry of every event) for the four
// records of one exec, against a cache seeded with a process tree 6 deep.
func BenchmarkDecodeTrack(b *testing.B) {
	recs := benchRecords(b)
	d := &decoder{backend: "tracepoint"}
	s := &Sensor{cache: proc.NewCache(), byKind: map[string]uint64{}}
	for pid := uint32(4096); pid <= 4100; pid++ {
		s.cache.Exec(pid, pid-1, uint64(pid), "/usr/bin/bash")
	}
	s.cache.Exec(4242, 4100, 1, "/usr/bin/bash")
	order := [][]byte{recs["fork"], recs["exec"], recs["image_load"], recs["exit"]}
	b.ReportAllocs()
	for b.Loop() {
		for _, rec := range order {
			ev, err := d.decode(rec)
			if err != nil {
				b.Fatal(err)
			}
			s.track(ev)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(order)), "ns/event")
}

// TestHeaderCopyIsBinaryDecode: decode copies the header's bytes into the
// generated struct; that must read every field as binary.Decode does
// (no implicit padding, little-endian host).
func TestHeaderCopyIsBinaryDecode(t *testing.T) {
	if n := binary.Size(sensorEventHdr{}); n != hdrSize {
		t.Fatalf("binary.Size %d, unsafe.Sizeof %d: the struct has implicit padding", n, hdrSize)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rec := make([]byte, hdrSize)
	for range 100 {
		for i := range rec {
			rec[i] = byte(rng.Uint32())
		}
		var want, got sensorEventHdr
		if _, err := binary.Decode(rec, binary.LittleEndian, &want); err != nil {
			t.Fatal(err)
		}
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&got)), hdrSize), rec)
		if got != want {
			t.Fatalf("copy %+v\nbinary.Decode %+v", got, want)
		}
	}
}

// TestDecodeBenchRecords checks what the benchmarks decode.
func TestDecodeBenchRecords(t *testing.T) {
	recs := benchRecords(t)
	d := &decoder{backend: "tracepoint"}
	ev, err := d.decode(recs["exec"])
	if err != nil {
		t.Fatal(err)
	}
	ex := ev.GetExec()
	if ex.GetFile().GetPath() != "/usr/bin/grep" || ex.Cwd != "/home/user/src/project" || len(ex.Argv) != 5 ||
		ev.Process.Comm != "grep" || ev.Process.Exe != "/usr/bin/grep" || ev.Time.AsTime().IsZero() {
		t.Errorf("exec: %v", ev)
	}
	ev, err = d.decode(recs["image_load"])
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetImageLoad().GetFile().GetPath(); got != "/usr/lib/x86_64-linux-gnu/libc.so.6" {
		t.Errorf("image_load path %q", got)
	}
}
