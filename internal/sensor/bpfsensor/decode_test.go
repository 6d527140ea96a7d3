package bpfsensor

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestJoinPath(t *testing.T) {
	for _, tc := range []struct {
		in    string
		trunc bool
		want  string
	}{
		{"", false, ""},
		{"true\x00bin\x00usr\x00", false, "/usr/bin/true"},
		{"mem\x001234\x00proc\x00", false, "/proc/1234/mem"},
		{"\x00", false, "/"},
		{"c\x00b\x00", true, ".../b/c"},
	} {
		var in []byte
		if tc.in != "" {
			in = []byte(tc.in)
		}
		if got := joinPath(in, tc.trunc); got != tc.want {
			t.Errorf("joinPath(%q, %v) = %q, want %q", tc.in, tc.trunc, got, tc.want)
		}
	}
}

func TestSplitArgv(t *testing.T) {
	args, trunc := splitArgv([]byte("ls\x00-l\x00/tmp\x00"))
	if len(args) != 3 || args[2] != "/tmp" || trunc {
		t.Errorf("got %q %v", args, trunc)
	}
	args, trunc = splitArgv([]byte("ls\x00-lon"))
	if len(args) != 2 || !trunc {
		t.Errorf("cut argv: got %q %v, want truncated", args, trunc)
	}
}

func TestUserDev(t *testing.T) {
	// kernel MKDEV(8, 1) is 8<<20|1; stat reports makedev(8, 1) = 0x801.
	if got := userDev(8<<20 | 1); got != 0x801 {
		t.Errorf("userDev(sda1) = %#x, want 0x801", got)
	}
	// minor above 255 moves to bits 20+.
	if got := userDev(0<<20 | 0x123); got != 0x23|0x100<<12 {
		t.Errorf("userDev(0:0x123) = %#x", got)
	}
}

func TestProcPID(t *testing.T) {
	for in, want := range map[string]uint32{
		"/proc/42/mem":         42,
		"/proc/42/task/43/mem": 42,
		"/proc/self/mem":       0,
		"/tmp/42/mem":          0,
	} {
		if got := procPID(in); got != want {
			t.Errorf("procPID(%q) = %d, want %d", in, got, want)
		}
	}
}

func record(t *testing.T, h sensorEventHdr, data []byte) []byte {
	t.Helper()
	h.DataLen = uint32(len(data))
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, h); err != nil {
		t.Fatal(err)
	}
	b.Write(data)
	return b.Bytes()
}

func TestDecodeExec(t *testing.T) {
	path := []byte("true\x00bin\x00")
	name := []byte("/bin/true\x00")
	cwd := []byte("tmp\x00")
	argv := []byte("true\x00x\x00")
	var data []byte
	var h sensorEventHdr
	for i, s := range [][]byte{path, cwd, name, argv} {
		h.StrOff[i] = uint16(len(data))
		h.StrLen[i] = uint16(len(s))
		data = append(data, s...)
	}
	h.Seq, h.Kind, h.Hook = 7, sensorEventKindKIND_EXEC, sensorEventHookHOOK_SCHED_EXEC
	h.Pid, h.Ppid, h.Dev, h.Ino = 10, 1, 8<<20|1, 99
	copy(h.Comm[:], []int8{'t', 'r', 'u', 'e'})
	d := &decoder{backend: "tracepoint"}
	ev, err := d.decode(record(t, h, data))
	if err != nil {
		t.Fatal(err)
	}
	ex := ev.GetExec()
	if ev.Seq != 7 || ev.Kind != "exec" || ev.Hook != "tp_btf/sched_process_exec" || ev.Process.Comm != "true" {
		t.Errorf("header: %v", ev)
	}
	if ex.File.Path != "/bin/true" || ex.File.Inode != 99 || ex.File.Dev != 0x801 || ev.Process.Exe != "/bin/true" {
		t.Errorf("file: %v exe %q", ex.File, ev.Process.Exe)
	}
	if ex.Filename != "/bin/true" || ex.Cwd != "/tmp" || len(ex.Argv) != 2 || ex.Argv[1] != "x" {
		t.Errorf("exec: %v", ex)
	}
}

func TestDecodeRejectsBadRecords(t *testing.T) {
	d := &decoder{}
	if _, err := d.decode([]byte{1, 2, 3}); err == nil {
		t.Error("short record accepted")
	}
	rec := record(t, sensorEventHdr{Kind: 99}, nil)
	if _, err := d.decode(rec); err == nil {
		t.Error("unknown kind accepted")
	}
	rec = record(t, sensorEventHdr{Kind: sensorEventKindKIND_EXIT}, []byte("abc"))
	if _, err := d.decode(rec[:len(rec)-1]); err == nil {
		t.Error("record shorter than its data_len accepted")
	}
}
