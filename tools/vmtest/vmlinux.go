package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// Booting the uncompressed kernel. Under TCG the bzImage's own
// decompressor is slow: Debian's 6.1 image is xz-compressed and spends
// about 6 s decompressing itself before the kernel starts, more than the
// rest of the boot. Both Debian kernels are built with CONFIG_PVH, so qemu
// can boot the ELF vmlinux inside the bzImage directly through the PVH
// entry point. vmtest extracts it once, into the kernel cache.

// bzPayload returns the compressed kernel inside a bzImage and the name of
// its compression, following the x86 boot protocol's setup header.
func bzPayload(bz []byte) (payload []byte, format string, err error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, "", errors.New("not a bzImage (no HdrS setup header)")
	}
	if v := binary.LittleEndian.Uint16(bz[0x206:]); v < 0x208 {
		return nil, "", fmt.Errorf("boot protocol %#x has no payload fields (needs 2.08)", v)
	}
	setupSects := int(bz[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	start := (setupSects+1)*512 + off
	if n < 8 || start < 0 || start+n > len(bz) {
		return nil, "", fmt.Errorf("payload [%d, +%d) is outside the %d-byte image", start, n, len(bz))
	}
	p := bz[start : start+n]
	switch {
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return p, "xz", nil
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return p, "zstd", nil
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		return p, "gzip", nil
	}
	return nil, "", fmt.Errorf("payload compression %x is not xz, zstd or gzip", p[:4])
}

// decompressPayload decompresses a bzImage payload. The kernel build
// appends the uncompressed size (le32) to xz and zstd payloads, which the
// tools reject as trailing garbage; it is cut off and used as a check.
func decompressPayload(ctx context.Context, p []byte, format string) ([]byte, error) {
	if format == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		return io.ReadAll(zr)
	}
	want := int(binary.LittleEndian.Uint32(p[len(p)-4:]))
	cmd := exec.CommandContext(ctx, format, "-dc")
	cmd.Stdin = bytes.NewReader(p[:len(p)-4])
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc: %w: %s", format, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if len(out) != want {
		return nil, fmt.Errorf("%s payload decompressed to %d bytes, the image says %d", format, len(out), want)
	}
	return out, nil
}

// hasPVHEntry reports whether the ELF kernel has a Xen PVH entry point
// note (XEN_ELFNOTE_PHYS32_ENTRY), which qemu needs to boot it directly.
func hasPVHEntry(vmlinux []byte) (bool, error) {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return false, err
	}
	const xenElfnotePhys32Entry = 18
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(prog.Open())
		if err != nil {
			return false, err
		}
		for len(notes) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(notes[0:]))
			descsz := int(binary.LittleEndian.Uint32(notes[4:]))
			typ := binary.LittleEndian.Uint32(notes[8:])
			name := notes[12:min(len(notes), 12+namesz)]
			if string(bytes.TrimRight(name, "\x00")) == "Xen" && typ == xenElfnotePhys32Entry {
				return true, nil
			}
			next := 12 + align4(namesz) + align4(descsz)
			if next > len(notes) {
				break
			}
			notes = notes[next:]
		}
	}
	return false, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// extractVmlinux writes the uncompressed kernel inside the bzImage bz to
// out, if qemu can boot it (it has a PVH entry point).
func extractVmlinux(ctx context.Context, bz, out string) error {
	img, err := os.ReadFile(bz)
	if err != nil {
		return err
	}
	payload, format, err := bzPayload(img)
	if err != nil {
		return fmt.Errorf("%s: %w", bz, err)
	}
	vmlinux, err := decompressPayload(ctx, payload, format)
	if err != nil {
		return fmt.Errorf("%s: %w", bz, err)
	}
	ok, err := hasPVHEntry(vmlinux)
	if err != nil {
		return fmt.Errorf("%s: decompressed kernel: %w", bz, err)
	}
	if !ok {
		return fmt.Errorf("%s: kernel has no PVH entry point (CONFIG_PVH)", bz)
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, vmlinux, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
