package lab

import (
	"bytes"
	"fmt"
	"strconv"
	"syscall"
	"testing"
)

// cpioEntry is one parsed newc entry.
type cpioEntry struct {
	name         string
	mode         uint32
	nlink        uint32
	rmaj, rmin   uint32
	data         string
	ino          uint32
	fileSize     int
	nameSizeNull bool // namesize counts the NUL
}

// readCPIO parses archives written by cpioWriter, concatenated, strictly:
// magic, hex fields, NUL-terminated names, 4-byte alignment, trailers.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var entries []cpioEntry
	off := 0
	for off < len(b) {
		if off%4 != 0 {
			t.Fatalf("entry at %d: not 4-byte aligned", off)
		}
		if len(b)-off < 110 {
			t.Fatalf("entry at %d: short header", off)
		}
		hdr := string(b[off : off+110])
		if hdr[:6] != "070701" {
			t.Fatalf("entry at %d: magic %q", off, hdr[:6])
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(hdr[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatalf("entry at %d: field %d: %v", off, i, err)
			}
			return uint32(v)
		}
		nameSize := int(field(11))
		nameEnd := off + 110 + nameSize
		name := string(b[off+110 : nameEnd-1])
		e := cpioEntry{
			name: name, ino: field(0), mode: field(1), nlink: field(4),
			fileSize: int(field(6)), rmaj: field(9), rmin: field(10),
			nameSizeNull: b[nameEnd-1] == 0,
		}
		if field(2) != 0 || field(3) != 0 || field(5) != 0 || field(12) != 0 {
			t.Errorf("%s: uid, gid, mtime or check not 0", name)
		}
		dataOff := (nameEnd + 3) &^ 3
		e.data = string(b[dataOff : dataOff+e.fileSize])
		off = (dataOff + e.fileSize + 3) &^ 3
		entries = append(entries, e)
	}
	if off != len(b) {
		t.Fatalf("archive: %d trailing bytes", len(b)-off)
	}
	return entries
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.Dir("/dev", 0o755)
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("/lab/modules", 0o644, []byte("a.ko\n"))
	c.File("lib/modules/6.12/kernel/x.ko", 0o644, []byte("ELF"))
	c.File("init", 0o755, nil)
	c.Dir("lab", 0o755) // already written as a parent
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	want := []struct {
		name  string
		mode  uint32
		nlink uint32
		rdev  [2]uint32
		data  string
	}{
		{"dev", syscall.S_IFDIR | 0o755, 2, [2]uint32{}, ""},
		{"dev/console", syscall.S_IFCHR | 0o600, 1, [2]uint32{5, 1}, ""},
		{"lab", syscall.S_IFDIR | 0o755, 2, [2]uint32{}, ""},
		{"lab/modules", syscall.S_IFREG | 0o644, 1, [2]uint32{}, "a.ko\n"},
		{"lib", syscall.S_IFDIR | 0o755, 2, [2]uint32{}, ""},
		{"lib/modules", syscall.S_IFDIR | 0o755, 2, [2]uint32{}, ""},
		{"lib/modules/6.12", syscall.S_IFDIR | 0o755, 2, [2]uint32{}, ""},
		{"lib/modules/6.12/kernel", syscall.S_IFDIR | 0o755, 2, [2]uint32{}, ""},
		{"lib/modules/6.12/kernel/x.ko", syscall.S_IFREG | 0o644, 1, [2]uint32{}, "ELF"},
		{"init", syscall.S_IFREG | 0o755, 1, [2]uint32{}, ""},
		{"TRAILER!!!", 0, 1, [2]uint32{}, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries %v, want %d", len(got), got, len(want))
	}
	inos := make(map[uint32]string)
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || g.nlink != w.nlink || [2]uint32{g.rmaj, g.rmin} != w.rdev || g.data != w.data {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
		if !g.nameSizeNull {
			t.Errorf("%s: name not NUL-terminated", g.name)
		}
		if g.name == "TRAILER!!!" {
			continue
		}
		if prev, ok := inos[g.ino]; ok {
			t.Errorf("%s and %s share inode %d", prev, g.name, g.ino)
		}
		inos[g.ino] = g.name
	}
}

// TestCPIOHeaderBytes pins the exact newc bytes of one file.
func TestCPIOHeaderBytes(t *testing.T) {
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.File("ab", 0o644, []byte("hello"))
	want := "070701" + "00000001" + "000081A4" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000005" + "00000000" + "00000000" + "00000000" + "00000000" + "00000003" + "00000000" +
		"ab\x00" + "\x00\x00\x00" + // 110+3 bytes, padded to 116
		"hello\x00\x00\x00"
	if got := buf.String(); got != want {
		t.Errorf("bytes:\n%q\nwant\n%q", got, want)
	}
}

func TestCPIOConcatenated(t *testing.T) {
	var buf bytes.Buffer
	for i := range 2 {
		c := newCPIOWriter(&buf)
		c.File(fmt.Sprintf("lab/f%d", i), 0o644, bytes.Repeat([]byte{'x'}, i+1))
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, e := range readCPIO(t, buf.Bytes()) {
		names = append(names, e.name)
	}
	want := fmt.Sprint([]string{"lab", "lab/f0", "TRAILER!!!", "lab", "lab/f1", "TRAILER!!!"})
	if fmt.Sprint(names) != want {
		t.Errorf("names = %v, want %v", names, want)
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n -= len(p); w.n < 0 {
		return 0, fmt.Errorf("disk full")
	}
	return len(p), nil
}

func TestCPIOWriterError(t *testing.T) {
	c := newCPIOWriter(&failWriter{n: 200})
	c.File("a/b", 0o644, []byte("data"))
	if err := c.Close(); err == nil {
		t.Fatal("Close after a failed write succeeded")
	}
}
