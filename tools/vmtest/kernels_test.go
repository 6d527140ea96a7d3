package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"os"
	"reflect"
	"testing"
)

func TestParseApt(t *testing.T) {
	deps := parseAptDepends(`linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
linux-image-6.12-amd64
 |Depends: linux-image-6.12.117+deb12-amd64
  Depends: initramfs-tools
other
  Depends: libc6
`)
	want := map[string]string{
		"linux-image-amd64":      "linux-image-6.1.0-56-amd64",
		"linux-image-6.12-amd64": "linux-image-6.12.117+deb12-amd64",
	}
	if !reflect.DeepEqual(deps, want) {
		t.Errorf("depends: got %v, want %v", deps, want)
	}
	cands := parseAptCandidates(`linux-image-6.1.0-56-amd64:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
gone:
  Installed: (none)
  Candidate: (none)
`)
	if want := map[string]string{"linux-image-6.1.0-56-amd64": "6.1.192-2"}; !reflect.DeepEqual(cands, want) {
		t.Errorf("candidates: got %v, want %v", cands, want)
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("linux-image-6.12.117+deb12-amd64_6.12.117-1~deb12u1"); got != "linux-image-6.12.117+deb12-amd64_6.12.117-1_deb12u1" {
		t.Errorf("got %s", got)
	}
}

// fakeBzImage builds the parts of a bzImage bzPayload reads.
func fakeBzImage(payload []byte) []byte {
	const setupSects = 2
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
	binary.LittleEndian.PutUint32(img[0x248:], 16)
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	img = append(img, make([]byte, 16)...)
	img = append(img, payload...)
	return append(img, "trailing setup data"...)
}

func TestBzPayload(t *testing.T) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write([]byte("\x7fELF pretend kernel"))
	zw.Close()
	p, format, err := bzPayload(fakeBzImage(z.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if format != "gzip" || !bytes.Equal(p, z.Bytes()) {
		t.Fatalf("format %s, payload %x", format, p)
	}
	out, err := decompressPayload(context.Background(), p, format)
	if err != nil || string(out) != "\x7fELF pretend kernel" {
		t.Errorf("decompressed %q, %v", out, err)
	}
	if _, _, err := bzPayload([]byte("MZ not a kernel")); err == nil {
		t.Error("accepted a non-bzImage")
	}
}

// TestExtractVmlinux runs on a real cached kernel, when there is one.
func TestExtractVmlinux(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	k, ok := kernelCache{dir: defaultCacheDir()}.readIndex("6.1")
	if !ok {
		t.Skip("no cached 6.1 kernel (run vmtest kernels)")
	}
	out := t.TempDir() + "/vmlinux"
	if err := extractVmlinux(context.Background(), k.Vmlinuz, out); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(out); err != nil || st.Size() < 10<<20 {
		t.Fatalf("vmlinux: %v %v", st, err)
	}
}
