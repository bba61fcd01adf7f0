package fwcfg

import (
	"bytes"
	"strings"
	"testing"
)

// name56 returns s NUL-padded to the 56 bytes of a command's name field.
func name56(s string) []byte {
	b := make([]byte, 56)
	copy(b, s)
	return b
}

func TestLoaderEncoding(t *testing.T) {
	var l Loader
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.Allocate("etc/acpi/rsdp", 16, ZoneFSeg))
	must(l.Allocate("etc/acpi/tables", 64, ZoneHigh))
	must(l.AddPointer("etc/acpi/rsdp", "etc/acpi/tables", 0x18, 8))
	must(l.AddChecksum("etc/acpi/rsdp", 8, 0, 20))

	got := l.Bytes()
	if len(got) != 4*128 {
		t.Fatalf("%d bytes, want %d", len(got), 4*128)
	}
	entry := func(i int) []byte { return got[128*i : 128*(i+1)] }

	// ALLOCATE: le32 1 at 0, file at 4, le32 align at 60, zone at 64.
	want := make([]byte, 128)
	want[0] = 1
	copy(want[4:60], name56("etc/acpi/rsdp"))
	want[60] = 16
	want[64] = 2
	if !bytes.Equal(entry(0), want) {
		t.Errorf("ALLOCATE rsdp:\n% x\nwant\n% x", entry(0), want)
	}
	want = make([]byte, 128)
	want[0] = 1
	copy(want[4:60], name56("etc/acpi/tables"))
	want[60] = 64
	want[64] = 1
	if !bytes.Equal(entry(1), want) {
		t.Errorf("ALLOCATE tables:\n% x\nwant\n% x", entry(1), want)
	}

	// ADD_POINTER: le32 2, dest at 4, src at 60, le32 offset at 116, size at 120.
	want = make([]byte, 128)
	want[0] = 2
	copy(want[4:60], name56("etc/acpi/rsdp"))
	copy(want[60:116], name56("etc/acpi/tables"))
	want[116] = 0x18
	want[120] = 8
	if !bytes.Equal(entry(2), want) {
		t.Errorf("ADD_POINTER:\n% x\nwant\n% x", entry(2), want)
	}

	// ADD_CHECKSUM: le32 3, file at 4, le32 result at 60, start at 64, length at 68.
	want = make([]byte, 128)
	want[0] = 3
	copy(want[4:60], name56("etc/acpi/rsdp"))
	want[60] = 8
	want[64] = 0
	want[68] = 20
	if !bytes.Equal(entry(3), want) {
		t.Errorf("ADD_CHECKSUM:\n% x\nwant\n% x", entry(3), want)
	}

	// Multi-byte fields are little-endian.
	var m Loader
	must(m.Allocate("a", 0x10000, ZoneHigh))
	must(m.AddPointer("a", "a", 0x01020304, 4))
	must(m.AddChecksum("a", 0x11223344, 0x11223300, 0x100))
	b := m.Bytes()
	for _, c := range []struct {
		off  int
		want []byte
	}{
		{60, []byte{0, 0, 1, 0}},
		{128 + 116, []byte{4, 3, 2, 1}},
		{128 + 120, []byte{4}},
		{256 + 60, []byte{0x44, 0x33, 0x22, 0x11}},
		{256 + 64, []byte{0x00, 0x33, 0x22, 0x11}},
		{256 + 68, []byte{0x00, 0x01, 0, 0}},
	} {
		if g := b[c.off : c.off+len(c.want)]; !bytes.Equal(g, c.want) {
			t.Errorf("bytes at %d: % x, want % x", c.off, g, c.want)
		}
	}

	// Bytes is a copy.
	b[0] = 0xff
	if m.Bytes()[0] != 1 {
		t.Error("Bytes returned the loader's own buffer")
	}
}

func TestLoaderValidation(t *testing.T) {
	long := strings.Repeat("x", 56)
	tests := []struct {
		name string
		op   func(l *Loader) error
		ok   bool
	}{
		{"allocate", func(l *Loader) error { return l.Allocate("b", 4096, ZoneHigh) }, true},
		{"allocate 55-byte name", func(l *Loader) error { return l.Allocate(long[:55], 1, ZoneFSeg) }, true},
		{"allocate 56-byte name", func(l *Loader) error { return l.Allocate(long, 1, ZoneFSeg) }, false},
		{"allocate empty name", func(l *Loader) error { return l.Allocate("", 1, ZoneFSeg) }, false},
		{"allocate twice", func(l *Loader) error { return l.Allocate("a", 1, ZoneFSeg) }, false},
		{"align 0", func(l *Loader) error { return l.Allocate("b", 0, ZoneHigh) }, false},
		{"align 3", func(l *Loader) error { return l.Allocate("b", 3, ZoneHigh) }, false},
		{"zone 0", func(l *Loader) error { return l.Allocate("b", 8, 0) }, false},
		{"zone 3", func(l *Loader) error { return l.Allocate("b", 8, 3) }, false},
		{"pointer size 1", func(l *Loader) error { return l.AddPointer("a", "a", 0, 1) }, true},
		{"pointer size 2", func(l *Loader) error { return l.AddPointer("a", "a", 0, 2) }, true},
		{"pointer size 3", func(l *Loader) error { return l.AddPointer("a", "a", 0, 3) }, false},
		{"pointer size 0", func(l *Loader) error { return l.AddPointer("a", "a", 0, 0) }, false},
		{"pointer size 16", func(l *Loader) error { return l.AddPointer("a", "a", 0, 16) }, false},
		{"pointer at the 4 GiB edge", func(l *Loader) error { return l.AddPointer("a", "a", 0xfffffff8, 8) }, true},
		{"pointer past 4 GiB", func(l *Loader) error { return l.AddPointer("a", "a", 0xfffffffc, 8) }, false},
		{"pointer from unallocated", func(l *Loader) error { return l.AddPointer("a", "b", 0, 4) }, false},
		{"pointer into unallocated", func(l *Loader) error { return l.AddPointer("b", "a", 0, 4) }, false},
		{"checksum", func(l *Loader) error { return l.AddChecksum("a", 9, 0, 36) }, true},
		{"checksum of unallocated", func(l *Loader) error { return l.AddChecksum("b", 9, 0, 36) }, false},
		{"checksum byte before range", func(l *Loader) error { return l.AddChecksum("a", 3, 4, 36) }, false},
		{"checksum byte after range", func(l *Loader) error { return l.AddChecksum("a", 40, 4, 36) }, false},
		{"checksum of nothing", func(l *Loader) error { return l.AddChecksum("a", 0, 0, 0) }, false},
		{"checksum past 4 GiB", func(l *Loader) error { return l.AddChecksum("a", 0xfffffff0, 0xfffffff0, 0x20) }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l Loader
			if err := l.Allocate("a", 64, ZoneHigh); err != nil {
				t.Fatal(err)
			}
			n := len(l.Bytes())
			err := tc.op(&l)
			if (err == nil) != tc.ok {
				t.Fatalf("error %v, want ok=%v", err, tc.ok)
			}
			if want := n + 128; tc.ok && len(l.Bytes()) != want || !tc.ok && len(l.Bytes()) != n {
				t.Fatalf("%d bytes after the command", len(l.Bytes()))
			}
		})
	}
}

// The loader file goes into the device like any other.
func TestLoaderAsFile(t *testing.T) {
	var l Loader
	if err := l.Allocate("etc/acpi/tables", 64, ZoneHigh); err != nil {
		t.Fatal(err)
	}
	r := newRig(t)
	if err := r.d.AddFile(LoaderFile, l.Bytes()); err != nil {
		t.Fatal(err)
	}
	dir := readDir(t, r)
	if len(dir) != 1 || dir[0].name != LoaderFile || dir[0].size != 128 {
		t.Fatalf("directory %+v", dir)
	}
}
