package fwcfg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// fakeMem is guest RAM at [base, base+len(buf)): accesses that do not lie
// entirely within it fail and copy nothing. It records the writes that
// succeed.
type fakeMem struct {
	base   uint64
	buf    []byte
	writes []span
}

type span struct{ addr, n uint64 }

func (s span) contains(o span) bool {
	return o.n == 0 || (o.addr >= s.addr && o.addr-s.addr <= s.n && o.n <= s.n-(o.addr-s.addr))
}

var errOutside = errors.New("outside fake RAM")

func newMem(base uint64, size int) *fakeMem { return &fakeMem{base: base, buf: make([]byte, size)} }

func (m *fakeMem) slice(gpa uint64, n int) ([]byte, error) {
	if !(span{m.base, uint64(len(m.buf))}).contains(span{gpa, uint64(n)}) {
		return nil, fmt.Errorf("%w: %#x+%#x", errOutside, gpa, n)
	}
	off := gpa - m.base
	return m.buf[off : off+uint64(n)], nil
}

func (m *fakeMem) ReadAt(b []byte, gpa uint64) error {
	s, err := m.slice(gpa, len(b))
	if err != nil {
		return err
	}
	copy(b, s)
	return nil
}

func (m *fakeMem) WriteAt(b []byte, gpa uint64) error {
	s, err := m.slice(gpa, len(b))
	if err != nil {
		return err
	}
	m.writes = append(m.writes, span{gpa, uint64(len(b))})
	copy(s, b)
	return nil
}

// rig is a device on fake memory with its log collected.
type rig struct {
	d    *Device
	mem  *fakeMem
	mu   sync.Mutex
	logs []error
}

const (
	memBase = 0x10000
	memSize = 0x10000
)

func newRig(t testing.TB) *rig {
	r := &rig{mem: newMem(memBase, memSize)}
	r.d = New(r.mem, func(err error) {
		r.mu.Lock()
		r.logs = append(r.logs, err)
		r.mu.Unlock()
	})
	return r
}

func (r *rig) nlogs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.logs)
}

func (r *rig) sel(key uint16) {
	r.d.Ports().Write(portSelector, binary.LittleEndian.AppendUint16(nil, key))
}

func (r *rig) read(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		var v [1]byte
		r.d.Ports().Read(portData, v[:])
		b[i] = v[0]
	}
	return b
}

// dma writes an access structure at acc and starts it; it returns the
// control word found there afterwards.
func (r *rig) dma(t testing.TB, acc uint64, control, length uint32, addr uint64) uint32 {
	t.Helper()
	r.put(acc, control, length, addr)
	return r.start(acc)
}

// put writes an access structure at acc, if that is in RAM.
func (r *rig) put(acc uint64, control, length uint32, addr uint64) {
	var s [16]byte
	binary.BigEndian.PutUint32(s[0:], control)
	binary.BigEndian.PutUint32(s[4:], length)
	binary.BigEndian.PutUint64(s[8:], addr)
	if err := r.mem.ReadAt(make([]byte, 16), acc); err == nil {
		copy(r.mem.buf[acc-r.mem.base:], s[:])
	}
}

// start starts the access at acc with a 32-bit write of each half and
// returns the control word found there afterwards.
func (r *rig) start(acc uint64) uint32 {
	r.mem.writes = nil
	r.d.DMA().Write(dmaHigh, binary.BigEndian.AppendUint32(nil, uint32(acc>>32)))
	r.d.DMA().Write(dmaLow, binary.BigEndian.AppendUint32(nil, uint32(acc)))
	var out [4]byte
	if err := r.mem.ReadAt(out[:], acc); err != nil {
		return 0xdeadbeef
	}
	return binary.BigEndian.Uint32(out[:])
}

func TestSignatureAndID(t *testing.T) {
	for _, tc := range []struct {
		name string
		mem  Memory
		id   uint32
		sig  string
	}{
		{"with DMA", newMem(0, 16), 3, "QEMU CFG"},
		{"without DMA", nil, 1, "\xff\xff\xff\xff\xff\xff\xff\xff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &rig{d: New(tc.mem, nil)}
			// The selector starts at the signature.
			if got := string(r.read(4)); got != "QEMU" {
				t.Errorf("signature %q", got)
			}
			if got := r.read(2); !bytes.Equal(got, []byte{0, 0}) {
				t.Errorf("past the signature: % x", got)
			}
			r.sel(KeySignature)
			if got := string(r.read(4)); got != "QEMU" {
				t.Errorf("signature after select %q", got)
			}
			r.sel(KeyID)
			if got := binary.LittleEndian.Uint32(r.read(4)); got != tc.id {
				t.Errorf("ID %#x, want %#x", got, tc.id)
			}
			var sig [8]byte
			r.d.DMA().Read(0, sig[:4])
			r.d.DMA().Read(4, sig[4:])
			if string(sig[:]) != tc.sig {
				t.Errorf("DMA register reads %q, want %q", sig, tc.sig)
			}
			r.d.DMA().Read(0, sig[:])
			if string(sig[:]) != tc.sig {
				t.Errorf("DMA register (8 bytes) reads %q, want %q", sig, tc.sig)
			}
		})
	}
}

type dirEntry struct {
	size   uint32
	key    uint16
	resv   uint16
	name   string
	rawPad []byte
}

func readDir(t *testing.T, r *rig) []dirEntry {
	t.Helper()
	r.sel(KeyFileDir)
	n := binary.BigEndian.Uint32(r.read(4))
	var out []dirEntry
	for range n {
		e := r.read(64)
		name, _, _ := bytes.Cut(e[8:], []byte{0})
		out = append(out, dirEntry{
			size: binary.BigEndian.Uint32(e), key: binary.BigEndian.Uint16(e[4:]), resv: binary.BigEndian.Uint16(e[6:]),
			name: string(name), rawPad: e[8+len(name):],
		})
	}
	if rest := r.read(4); !bytes.Equal(rest, make([]byte, 4)) {
		t.Errorf("after the directory: % x", rest)
	}
	return out
}

func TestDirectory(t *testing.T) {
	r := newRig(t)
	files := map[string]int{"etc/table-loader": 384, "bootorder": 12, "etc/acpi/tables": 4000, "etc/e820": 60, "a": 0, strings.Repeat("x", 55): 1}
	for _, name := range []string{"etc/table-loader", "bootorder", "etc/acpi/tables", "etc/e820", "a", strings.Repeat("x", 55)} {
		if err := r.d.AddFile(name, make([]byte, files[name])); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"a", "bootorder", "etc/acpi/tables", "etc/e820", "etc/table-loader", strings.Repeat("x", 55)}
	dir := readDir(t, r)
	if len(dir) != len(want) {
		t.Fatalf("%d entries, want %d", len(dir), len(want))
	}
	for i, e := range dir {
		if e.name != want[i] || e.key != KeyFileFirst+uint16(i) || int(e.size) != files[want[i]] || e.resv != 0 {
			t.Errorf("entry %d: %+v, want %q key %#x size %d", i, e, want[i], KeyFileFirst+uint16(i), files[want[i]])
		}
		if !bytes.Equal(e.rawPad, make([]byte, len(e.rawPad))) || len(e.rawPad) != FileNameSize-len(e.name) {
			t.Errorf("entry %d: name padding % x", i, e.rawPad)
		}
	}
}

func TestEmptyDirectory(t *testing.T) {
	r := newRig(t)
	if dir := readDir(t, r); len(dir) != 0 {
		t.Fatalf("%d entries", len(dir))
	}
}

func TestFileThroughPorts(t *testing.T) {
	r := newRig(t)
	data := []byte("hello, firmware")
	if err := r.d.AddFile("opt/b", []byte("other")); err != nil {
		t.Fatal(err)
	}
	if err := r.d.AddFile("opt/a", data); err != nil {
		t.Fatal(err)
	}
	r.sel(KeyFileFirst) // opt/a sorts first
	if got := r.read(len(data) + 3); !bytes.Equal(got, append(bytes.Clone(data), 0, 0, 0)) {
		t.Fatalf("read %q", got)
	}
	r.sel(KeyFileFirst + 1)
	if got := string(r.read(5)); got != "other" {
		t.Fatalf("second file %q", got)
	}
	r.sel(KeyFileFirst)
	r.read(7)
	r.sel(KeyFileFirst) // rewinds
	if got := string(r.read(5)); got != "hello" {
		t.Fatalf("after reselect %q", got)
	}
}

func TestSelectorBits(t *testing.T) {
	r := newRig(t)
	if err := r.d.AddItem(0x0005, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := r.d.AddItem(0x8005, []byte{3, 4}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sel  uint16
		want []byte
	}{
		{0x0005, []byte{1, 2, 0}},
		{0x4005, []byte{1, 2, 0}}, // write channel bit ignored
		{0x8005, []byte{3, 4, 0}}, // arch-local is its own item
		{0xc005, []byte{3, 4, 0}},
		{0x0006, []byte{0, 0, 0}}, // unknown
		{0x8006, []byte{0, 0, 0}},
	} {
		r.sel(tc.sel)
		if got := r.read(3); !bytes.Equal(got, tc.want) {
			t.Errorf("selector %#04x: % x, want % x", tc.sel, got, tc.want)
		}
	}
	if n := r.nlogs(); n != 2 {
		t.Errorf("%d reports for two unknown keys: %v", n, r.logs)
	}
	r.sel(0x0006)
	r.read(10)
	r.sel(0x4006) // the same key
	if n := r.nlogs(); n != 2 {
		t.Errorf("%d reports after selecting an unknown key again: %v", n, r.logs)
	}
}

func TestWritesIgnored(t *testing.T) {
	r := newRig(t)
	r.sel(KeySignature)
	r.d.Ports().Write(portData, []byte{'X'})
	r.d.Ports().Write(portData, []byte{'Y'})
	if got := string(r.read(4)); got != "QEMU" {
		t.Fatalf("signature after data writes %q", got)
	}
	if n := r.nlogs(); n != 1 {
		t.Fatalf("%d reports for data writes to one item, want 1: %v", n, r.logs)
	}
	// Accesses that are no register.
	before := r.nlogs()
	r.d.Ports().Write(portSelector, []byte{1})      // byte write of the selector
	r.d.Ports().Write(portData, []byte{1, 2})       // not a width the bus allows there, but still
	r.d.DMA().Write(2, []byte{0, 0})                // misaligned
	r.d.DMA().Write(dmaLow, []byte{0, 0, 0, 0}[:2]) // short low half
	var w [2]byte
	r.d.Ports().Read(portSelector, w[:])
	if w != [2]byte{0xff, 0xff} {
		t.Errorf("selector reads % x", w)
	}
	r.sel(KeySignature)
	if got := string(r.read(4)); got != "QEMU" {
		t.Errorf("signature after stray accesses %q", got)
	}
	if r.nlogs() != before+5 {
		t.Errorf("%d reports for 5 stray accesses", r.nlogs()-before)
	}
	if len(r.mem.writes) != 0 {
		t.Errorf("stray accesses wrote guest memory: %v", r.mem.writes)
	}
}

func TestReportBudget(t *testing.T) {
	r := newRig(t)
	for k := range 1000 {
		r.sel(uint16(0x1000 + k))
	}
	if n := r.nlogs(); n != maxReports+1 {
		t.Fatalf("%d reports, want %d and the notice", n, maxReports)
	}
}

func TestAddFile(t *testing.T) {
	long := strings.Repeat("n", FileNameSize)
	for _, tc := range []struct {
		name string
		file string
		size int
		ok   bool
	}{
		{"plain", "etc/e820", 20, true},
		{"empty data", "etc/empty", 0, true},
		{"55 bytes", long[:55], 1, true},
		{"56 bytes", long, 1, false},
		{"empty name", "", 1, false},
		{"duplicate", "dup", 1, false},
		{"NUL", "a\x00b", 1, false},
		{"newline", "a\nb", 1, false},
		{"non-ASCII", "fïle", 1, false},
		{"too big", "big", MaxItemSize + 1, false},
		{"largest", "max", MaxItemSize, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			if err := r.d.AddFile("dup", nil); err != nil {
				t.Fatal(err)
			}
			err := r.d.AddFile(tc.file, make([]byte, tc.size))
			if (err == nil) != tc.ok {
				t.Fatalf("AddFile(%q, %d bytes): %v", tc.file, tc.size, err)
			}
		})
	}
	t.Run("after start", func(t *testing.T) {
		for _, touch := range []func(r *rig){
			func(r *rig) { r.read(1) },
			func(r *rig) { r.sel(0) },
			func(r *rig) { r.d.DMA().Read(0, make([]byte, 4)) },
			func(r *rig) { r.d.DMA().Write(0, make([]byte, 4)) },
		} {
			r := newRig(t)
			touch(r)
			if err := r.d.AddFile("late", []byte{1}); err == nil {
				t.Error("AddFile after the guest's first access succeeded")
			}
			if err := r.d.AddItem(KeyNbCPUs, []byte{1, 0}); err == nil {
				t.Error("AddItem after the guest's first access succeeded")
			}
		}
	})
	t.Run("copies", func(t *testing.T) {
		r := newRig(t)
		b := []byte("abc")
		if err := r.d.AddFile("f", b); err != nil {
			t.Fatal(err)
		}
		b[0] = 'X'
		r.sel(KeyFileFirst)
		if got := string(r.read(3)); got != "abc" {
			t.Fatalf("file reads %q after the caller changed its slice", got)
		}
	})
}

func TestAddItem(t *testing.T) {
	for _, tc := range []struct {
		key  uint16
		size int
		ok   bool
	}{
		{KeyNbCPUs, 2, true},
		{KeyRAMSize, 8, true},
		{KeyE820Table, 4, true},
		{0x801f, 1, true},
		{0x8020, 1, true}, // arch-local keys have no file range
		{0x001f, 1, true},
		{KeySignature, 4, false},
		{KeyID, 4, false},
		{KeyFileDir, 4, false},
		{KeyFileFirst, 1, false},
		{0x3fff, 1, false},
		{0x4005, 2, false}, // write channel
		{0xc000, 2, false},
		{KeyMaxCPUs, MaxItemSize + 1, false},
		{KeyBootMenu, 2, false}, // taken below
	} {
		t.Run(fmt.Sprintf("%#04x", tc.key), func(t *testing.T) {
			r := newRig(t)
			if err := r.d.AddUint16(KeyBootMenu, 1); err != nil {
				t.Fatal(err)
			}
			err := r.d.AddItem(tc.key, make([]byte, tc.size))
			if (err == nil) != tc.ok {
				t.Fatalf("AddItem(%#04x, %d bytes): %v", tc.key, tc.size, err)
			}
		})
	}
}

func TestNumericHelpers(t *testing.T) {
	r := newRig(t)
	if err := r.d.SetCPUs(3, 8); err != nil {
		t.Fatal(err)
	}
	if err := r.d.AddUint64(KeyRAMSize, 0x1_2345_6789); err != nil {
		t.Fatal(err)
	}
	if err := r.d.AddUint32(KeyE820Table, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  uint16
		want []byte
	}{
		{KeyNbCPUs, []byte{3, 0, 0}},
		{KeyMaxCPUs, []byte{8, 0, 0}},
		{KeyRAMSize, []byte{0x89, 0x67, 0x45, 0x23, 1, 0, 0, 0, 0}},
		{KeyE820Table, []byte{0, 0, 0, 0, 0}},
	} {
		r.sel(tc.key)
		if got := r.read(len(tc.want)); !bytes.Equal(got, tc.want) {
			t.Errorf("item %#04x: % x, want % x", tc.key, got, tc.want)
		}
	}
	for _, c := range [][2]int{{0, 1}, {2, 1}, {1, 65536}} {
		if err := New(nil, nil).SetCPUs(c[0], c[1]); err == nil {
			t.Errorf("SetCPUs(%d, %d) succeeded", c[0], c[1])
		}
	}
}

func TestE820Table(t *testing.T) {
	got := E820Table([]memory.E820Entry{{Addr: 0, Size: 0x9fc00, Type: memory.E820RAM}, {Addr: 0xfffc0000, Size: 0x40000, Type: memory.E820Reserved}})
	want := []byte{
		0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xfc, 0x09, 0, 0, 0, 0, 0, 1, 0, 0, 0,
		0, 0, 0xfc, 0xff, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0, 2, 0, 0, 0,
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got\n% x\nwant\n% x", got, want)
	}
}

func TestState(t *testing.T) {
	r := newRig(t)
	if err := r.d.AddFile("f", []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	r.sel(KeyFileFirst)
	r.read(4)
	r.d.DMA().Write(dmaHigh, []byte{0, 0, 0, 1})
	s := r.d.State()
	if s != (State{Selector: KeyFileFirst, Offset: 4, DMAHigh: 1, Started: true}) {
		t.Fatalf("state %+v", s)
	}
	r2 := newRig(t)
	if err := r2.d.AddFile("f", []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	r2.d.SetState(s)
	if got := string(r2.read(3)); got != "456" {
		t.Fatalf("restored device reads %q", got)
	}
	if r2.d.State().DMAHigh != 1 {
		t.Fatal("DMA high half not restored")
	}
	s.Offset = 1000
	r2.d.SetState(s)
	if r2.d.State().Offset != 10 {
		t.Fatalf("offset past the end restored as %d", r2.d.State().Offset)
	}
	if err := r2.d.AddFile("g", nil); err == nil {
		t.Fatal("AddFile after restoring a started device succeeded")
	}
}

func TestConcurrent(t *testing.T) {
	r := newRig(t)
	if err := r.d.AddFile("f", bytes.Repeat([]byte{7}, 4096)); err != nil {
		t.Fatal(err)
	}
	// A DMA read of the file into RAM; the device serializes its memory
	// accesses under its lock.
	acc := binary.BigEndian.AppendUint32(nil, ctlSelect|ctlRead|uint32(KeyFileFirst)<<16)
	acc = binary.BigEndian.AppendUint32(acc, 64)
	acc = binary.BigEndian.AppendUint64(acc, memBase+0x100)
	copy(r.mem.buf, acc)
	low := binary.BigEndian.AppendUint32(nil, memBase)
	var wg sync.WaitGroup
	for g := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for i := range 2000 {
				switch (i + g) % 5 {
				case 0:
					r.d.Ports().Write(portSelector, []byte{0x20, 0})
				case 1:
					r.d.Ports().Read(portData, b[:])
				case 2:
					r.d.DMA().Read(0, make([]byte, 4))
				case 3:
					_ = r.d.State()
				case 4:
					r.d.DMA().Write(dmaLow, low)
				}
			}
		}()
	}
	wg.Wait()
}
