package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// image describes a synthetic bzImage.
type image struct {
	setupSects    uint8 // as stored; 0 means 4
	syssize       uint32
	version       uint16
	loadFlags     uint8
	xloadFlags    uint16
	cmdlineSize   uint32
	initrdAddrMax uint32
	alignment     uint32
	relocatable   uint8
	prefAddress   uint64
	initSize      uint32
	jumpLen       uint8 // byte at 0x201
	noBootFlag    bool
	noHdrS        bool
	versionStr    string
	trailer       int // bytes past the kernel, like a signature
}

// good is the shape of Debian's 6.12 vmlinuz, smaller.
func good() image {
	return image{
		setupSects:    0x1b,
		syssize:       0x1000, // 64 KiB of kernel
		version:       0x020f,
		loadFlags:     LoadedHigh,
		xloadFlags:    0x7f,
		cmdlineSize:   0x7ff,
		initrdAddrMax: 0x7fffffff,
		alignment:     0x200000,
		relocatable:   1,
		prefAddress:   0x1000000,
		initSize:      0x400000,
		jumpLen:       0x6a,
		versionStr:    "6.12.0-test (synthetic)",
	}
}

func (im image) bytes() []byte {
	sects := int(im.setupSects)
	if sects == 0 {
		sects = 4
	}
	setup := (sects + 1) * 512
	b := make([]byte, setup+int(im.syssize)*16+im.trailer)
	le := binary.LittleEndian
	b[0x1f1] = im.setupSects
	le.PutUint32(b[0x1f4:], im.syssize)
	if !im.noBootFlag {
		le.PutUint16(b[0x1fe:], 0xaa55)
	}
	b[0x200] = 0xeb
	b[0x201] = im.jumpLen
	if !im.noHdrS {
		copy(b[0x202:], "HdrS")
	}
	le.PutUint16(b[0x206:], im.version)
	if im.versionStr != "" {
		copy(b[0x400:], im.versionStr+"\x00")
		le.PutUint16(b[0x20e:], 0x200)
	}
	b[0x211] = im.loadFlags
	le.PutUint32(b[0x214:], 0x100000)
	le.PutUint32(b[0x22c:], im.initrdAddrMax)
	le.PutUint32(b[0x230:], im.alignment)
	b[0x234] = im.relocatable
	b[0x235] = 21
	le.PutUint16(b[0x236:], im.xloadFlags)
	le.PutUint32(b[0x238:], im.cmdlineSize)
	le.PutUint64(b[0x258:], im.prefAddress)
	le.PutUint32(b[0x260:], im.initSize)
	// Recognisable kernel bytes: the word at each 4 KiB is its offset.
	k := b[setup : setup+int(im.syssize)*16]
	for i := 0; i+8 <= len(k); i += 4096 {
		le.PutUint64(k[i:], uint64(i)|0xc0de<<48)
	}
	for i := range im.trailer {
		b[len(b)-1-i] = 0xee
	}
	return b
}

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*image)
		trunc  int // cut the file to this many bytes
		errHas string
	}{
		{name: "valid"},
		{name: "setup_sects 0 means 4", mod: func(im *image) { im.setupSects = 0 }},
		{name: "bad boot flag", mod: func(im *image) { im.noBootFlag = true }, errHas: "no boot sector magic 0xAA55 at 0x1FE"},
		{name: "no HdrS", mod: func(im *image) { im.noHdrS = true }, errHas: "not a bzImage: no HdrS signature at 0x202"},
		{name: "protocol 2.11", mod: func(im *image) { im.version = 0x020b }, errHas: "boot protocol 2.11 too old (need 2.12"},
		{name: "protocol 2.04", mod: func(im *image) { im.version = 0x0204 }, errHas: "boot protocol 2.04 too old"},
		{name: "zImage", mod: func(im *image) { im.loadFlags = 0 }, errHas: "lacks LOADED_HIGH"},
		{name: "32-bit only", mod: func(im *image) { im.xloadFlags = XLFCanBeLoadedAbove4G }, errHas: "no 64-bit entry point: xloadflags 0x0002 lacks XLF_KERNEL_64"},
		{name: "no syssize", mod: func(im *image) { im.syssize = 0 }, errHas: "syssize 0"},
		{name: "no cmdline_size", mod: func(im *image) { im.cmdlineSize = 0 }, errHas: "cmdline_size 0"},
		{name: "init_size too small", mod: func(im *image) { im.initSize = 0x100 }, errHas: "init_size 0x100, smaller than"},
		{name: "bad alignment", mod: func(im *image) { im.alignment = 0x300000 }, errHas: "not a power of two"},
		{name: "short header", mod: func(im *image) { im.jumpLen = 0x40 }, errHas: "setup header ends at 0x242"},
		{name: "tiny file", trunc: 0x100, errHas: "file is only 256 bytes"},
		{name: "empty file", trunc: 0, errHas: "file is only 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := good()
			if tc.mod != nil {
				tc.mod(&im)
			}
			b := im.bytes()
			if tc.trunc > 0 || tc.name == "empty file" {
				b = b[:tc.trunc]
			}
			h, err := ParseHeader(bytes.NewReader(b))
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantSects := int(im.setupSects)
			if wantSects == 0 {
				wantSects = 4
			}
			if h.SetupSects != wantSects || h.Syssize != im.syssize || h.Version != im.version ||
				h.XLoadFlags != im.xloadFlags || h.CmdlineSize != im.cmdlineSize || h.InitrdAddrMax != im.initrdAddrMax ||
				h.KernelAlignment != im.alignment || !h.Relocatable || h.PrefAddress != im.prefAddress ||
				h.InitSize != im.initSize || h.HeaderEnd != 0x26c || h.MinAlignment != 21 {
				t.Errorf("header = %+v, from %+v", h, im)
			}
			if h.ProtocolString() != "2.15" || h.KernelVersion != im.versionStr {
				t.Errorf("protocol %q version %q", h.ProtocolString(), h.KernelVersion)
			}
			if h.KernelOffset() != int64(wantSects+1)*512 {
				t.Errorf("KernelOffset = %#x", h.KernelOffset())
			}
		})
	}
}

func TestNotBzImageIsWrapped(t *testing.T) {
	im := good()
	im.noHdrS = true
	_, err := ParseHeader(bytes.NewReader(im.bytes()))
	if !errors.Is(err, ErrNotBzImage) {
		t.Fatalf("err = %v, want ErrNotBzImage", err)
	}
}

func TestRuntimeStart(t *testing.T) {
	h := &Header{Relocatable: true, KernelAlignment: 0x200000, PrefAddress: 0x1000000}
	for _, tc := range []struct{ load, want uint64 }{
		{0x100000, 0x1000000},  // below pref_address: runs at pref_address
		{0x1000000, 0x1000000}, //
		{0x1000001, 0x1200000}, // aligned up
		{0x3000000, 0x3000000},
	} {
		if got := h.RuntimeStart(tc.load); got != tc.want {
			t.Errorf("RuntimeStart(%#x) = %#x, want %#x", tc.load, got, tc.want)
		}
	}
	h.Relocatable = false
	if got := h.RuntimeStart(0x3000000); got != 0x1000000 {
		t.Errorf("non-relocatable RuntimeStart = %#x, want pref_address", got)
	}
}

func newGuest(t *testing.T, size uint64) *memory.Guest {
	t.Helper()
	g, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func read(t *testing.T, g *memory.Guest, gpa, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := g.ReadAt(b, gpa); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBootParams checks each field Load writes at its documented offset in
// boot_params (zero-page.rst, boot.rst).
func TestBootParams(t *testing.T) {
	const size = 256 << 20
	g := newGuest(t, size)
	im := good()
	im.trailer = 1472 // like a signed Debian image
	kernel := im.bytes()
	initrd := bytes.Repeat([]byte("initrd!\n"), 1000) // 8000 bytes
	e820 := memory.E820(size)
	const rsdp = 0xe0000
	l, err := Load(g, Params{
		Kernel: bytes.NewReader(kernel), Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
		Cmdline: "console=ttyS0 panic=-1", E820: e820, RSDP: rsdp,
	})
	if err != nil {
		t.Fatal(err)
	}
	bp := read(t, g, memory.ZeroPage, 4096)
	le := binary.LittleEndian

	// The setup header is copied from the image, 0x1f1 up to 0x202+b[0x201].
	hdrEnd := 0x202 + int(kernel[0x201])
	skip := map[int]bool{} // bytes the loader overwrites
	for _, r := range [][2]int{{0x1fa, 2}, {0x210, 1}, {0x211, 1}, {0x218, 8}, {0x224, 2}, {0x228, 4}} {
		for i := range r[1] {
			skip[r[0]+i] = true
		}
	}
	for i := 0x1f1; i < hdrEnd; i++ {
		if !skip[i] && bp[i] != kernel[i] {
			t.Errorf("boot_params[%#x] = %#x, image has %#x", i, bp[i], kernel[i])
		}
	}
	for i := hdrEnd; i < 0x290; i++ {
		if bp[i] != 0 {
			t.Errorf("boot_params[%#x] = %#x past the header, want 0", i, bp[i])
		}
	}

	wantInitrd := uint64(size-len(initrd)) &^ 0xfff
	for _, f := range []struct {
		name      string
		off, size int
		want      uint64
	}{
		{"acpi_rsdp_addr", 0x070, 8, rsdp},
		{"ext_ramdisk_image", 0x0c0, 4, 0},
		{"ext_ramdisk_size", 0x0c4, 4, 0},
		{"ext_cmd_line_ptr", 0x0c8, 4, 0},
		{"e820_entries", 0x1e8, 1, uint64(len(e820))},
		{"sentinel", 0x1ef, 1, 0},
		{"setup_sects", 0x1f1, 1, uint64(im.setupSects)},
		{"vid_mode", 0x1fa, 2, 0xffff},
		{"boot_flag", 0x1fe, 2, 0xaa55},
		{"header", 0x202, 4, 0x53726448},
		{"version", 0x206, 2, 0x020f},
		{"type_of_loader", 0x210, 1, 0xff},
		{"loadflags", 0x211, 1, LoadedHigh},
		{"ramdisk_image", 0x218, 4, wantInitrd},
		{"ramdisk_size", 0x21c, 4, uint64(len(initrd))},
		{"heap_end_ptr", 0x224, 2, 0},
		{"cmd_line_ptr", 0x228, 4, memory.Cmdline},
		{"cmdline_size", 0x238, 4, 0x7ff},
		{"setup_data", 0x250, 8, 0},
		{"init_size", 0x260, 4, 0x400000},
	} {
		var got uint64
		switch f.size {
		case 1:
			got = uint64(bp[f.off])
		case 2:
			got = uint64(le.Uint16(bp[f.off:]))
		case 4:
			got = uint64(le.Uint32(bp[f.off:]))
		case 8:
			got = le.Uint64(bp[f.off:])
		}
		if got != f.want {
			t.Errorf("%s at %#x = %#x, want %#x", f.name, f.off, got, f.want)
		}
	}

	// e820_table: 20-byte entries from 0x2d0.
	for i, e := range e820 {
		o := 0x2d0 + 20*i
		got := memory.E820Entry{Addr: le.Uint64(bp[o:]), Size: le.Uint64(bp[o+8:]), Type: memory.E820Type(le.Uint32(bp[o+16:]))}
		if got != e {
			t.Errorf("e820_table[%d] = %+v, want %+v", i, got, e)
		}
	}
	if o := 0x2d0 + 20*len(e820); !bytes.Equal(bp[o:o+20], make([]byte, 20)) {
		t.Errorf("e820_table[%d] is not zero", len(e820))
	}

	// Command line, NUL-terminated.
	if got := read(t, g, memory.Cmdline, 23); string(got) != "console=ttyS0 panic=-1\x00" {
		t.Errorf("command line = %q", got)
	}
	// Kernel at KernelStart, exactly syssize*16 bytes: the trailer is not loaded.
	k := read(t, g, memory.KernelStart, uint64(im.syssize)*16+4096)
	setup := (int(im.setupSects) + 1) * 512
	if !bytes.Equal(k[:im.syssize*16], kernel[setup:setup+int(im.syssize)*16]) {
		t.Error("kernel bytes at KernelStart differ from the image")
	}
	if !bytes.Equal(k[im.syssize*16:], make([]byte, 4096)) {
		t.Error("bytes past syssize were loaded")
	}
	// Initrd.
	if got := read(t, g, wantInitrd, uint64(len(initrd))); !bytes.Equal(got, initrd) {
		t.Error("initrd bytes differ")
	}
	if l.Initrd != (memory.Region{GPA: wantInitrd, Size: uint64(len(initrd))}) {
		t.Errorf("Loaded.Initrd = %+v", l.Initrd)
	}
	// Footprint: 1 MiB up to pref_address + init_size.
	if l.Footprint != (memory.Region{GPA: memory.KernelStart, Size: 0x1000000 + 0x400000 - memory.KernelStart}) {
		t.Errorf("Loaded.Footprint = %+v", l.Footprint)
	}

	// Entry.
	e := l.Entry
	if e.RIP != memory.KernelStart+0x200 || e.RSI != memory.ZeroPage || e.RSP != memory.BootStack || e.RFLAGS != 2 {
		t.Errorf("entry RIP %#x RSI %#x RSP %#x RFLAGS %#x", e.RIP, e.RSI, e.RSP, e.RFLAGS)
	}
}

func TestNoInitrdNoRSDP(t *testing.T) {
	g := newGuest(t, 128<<20)
	_, err := Load(g, Params{Kernel: bytes.NewReader(good().bytes()), E820: memory.E820(128 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	bp := read(t, g, memory.ZeroPage, 4096)
	le := binary.LittleEndian
	if le.Uint32(bp[0x218:]) != 0 || le.Uint32(bp[0x21c:]) != 0 || le.Uint64(bp[0x70:]) != 0 {
		t.Errorf("ramdisk %#x+%#x rsdp %#x, want zero", le.Uint32(bp[0x218:]), le.Uint32(bp[0x21c:]), le.Uint64(bp[0x70:]))
	}
	if got := read(t, g, memory.Cmdline, 1); got[0] != 0 {
		t.Errorf("empty command line starts with %#x", got[0])
	}
}

func TestCmdlineLimits(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cmdlineSize uint32
		n           int
		errHas      string
	}{
		{"at kernel limit", 0x7ff, 0x7ff, ""},
		{"over kernel limit", 0x7ff, 0x800, "kernel command line is 2048 bytes; this kernel accepts at most 2047"},
		{"at buffer limit", 0x100000, memory.CmdlineMax - 1, ""},
		{"over buffer limit", 0x100000, memory.CmdlineMax, fmt.Sprintf("kernel command line is %d bytes; this kernel accepts at most %d", memory.CmdlineMax, memory.CmdlineMax-1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest(t, 128<<20)
			im := good()
			im.cmdlineSize = tc.cmdlineSize
			s := strings.Repeat("x", tc.n)
			_, err := Load(g, Params{Kernel: bytes.NewReader(im.bytes()), Cmdline: s, E820: memory.E820(128 << 20)})
			if tc.errHas != "" {
				if err == nil || err.Error() != tc.errHas {
					t.Fatalf("err = %v, want %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := read(t, g, memory.Cmdline, uint64(tc.n+1))
			if string(got[:tc.n]) != s || got[tc.n] != 0 {
				t.Error("command line not copied NUL-terminated")
			}
		})
	}
	g := newGuest(t, 128<<20)
	_, err := Load(g, Params{Kernel: bytes.NewReader(good().bytes()), Cmdline: "a\x00b", E820: memory.E820(128 << 20)})
	if err == nil || !strings.Contains(err.Error(), "NUL byte at offset 1") {
		t.Errorf("embedded NUL: err = %v", err)
	}
}

func TestInitrdPlacement(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name       string
		ram        uint64
		initrdMax  uint32
		above4G    bool
		initSize   uint32
		initrdSize int64
		want       uint64 // 0: expect an error
		errHas     string
	}{
		{name: "top of small RAM", ram: 128 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 5000, want: 128*mib - 8192},
		{name: "page aligned size", ram: 128 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 3 * 4096, want: 128*mib - 3*4096},
		{name: "below initrd_addr_max", ram: 3072 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 1 * mib, want: 0x80000000 - 1*mib},
		{name: "initrd_addr_max not page aligned", ram: 3072 * mib, initrdMax: 0x37ffffff + 0x800, initSize: 4 * mib, initrdSize: 4096, want: 0x38000000 - 4096},
		{name: "above-4G kernel: end of low RAM", ram: 4096 * mib, initrdMax: 0x7fffffff, above4G: true, initSize: 4 * mib, initrdSize: 1 * mib, want: memory.PCIHoleStart - 1*mib},
		{name: "fills all free space", ram: 64 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 64*mib - 20*mib, want: 20 * mib},
		{name: "one byte too large", ram: 64 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 64*mib - 20*mib + 1,
			errHas: "initrd is 46137345 bytes (44 MiB) but only 46137344 bytes (44 MiB) are free between the kernel's footprint end 0x1400000 and 0x4000000"},
		{name: "larger than RAM", ram: 64 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 100 * mib, errHas: "initrd is 104857600 bytes (100 MiB)"},
		{name: "empty", ram: 64 * mib, initrdMax: 0x7fffffff, initSize: 4 * mib, initrdSize: 0, errHas: "must not be empty"},
		{name: "kernel does not fit", ram: 64 * mib, initrdMax: 0x7fffffff, initSize: 60 * mib, initrdSize: 4096,
			errHas: "kernel needs RAM up to 0x4c00000 (runtime start 0x1000000 + init_size 0x3c00000), but RAM below 4 GiB ends at 0x4000000: give the guest at least 76 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuest(t, tc.ram)
			im := good()
			im.initrdAddrMax = tc.initrdMax
			im.initSize = tc.initSize
			if !tc.above4G {
				im.xloadFlags &^= XLFCanBeLoadedAbove4G
			}
			initrd := bytes.Repeat([]byte{0x5a}, int(max(tc.initrdSize, 1)))
			l, err := Load(g, Params{
				Kernel: bytes.NewReader(im.bytes()), Initrd: bytes.NewReader(initrd), InitrdSize: tc.initrdSize,
				E820: memory.E820(tc.ram),
			})
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Initrd.GPA != tc.want || l.Initrd.GPA%4096 != 0 || l.Initrd.GPA < l.Footprint.End() {
				t.Errorf("initrd at %#x, want %#x (footprint ends %#x)", l.Initrd.GPA, tc.want, l.Footprint.End())
			}
			if last := uint64(tc.initrdMax); !tc.above4G && l.Initrd.End()-1 > last {
				t.Errorf("initrd ends at %#x past initrd_addr_max %#x", l.Initrd.End()-1, last)
			}
			bp := read(t, g, memory.ZeroPage, 4096)
			if got := binary.LittleEndian.Uint32(bp[0x218:]); uint64(got) != tc.want {
				t.Errorf("ramdisk_image = %#x", got)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	g := newGuest(t, 128<<20)
	im := good()
	b := im.bytes()
	_, err := Load(g, Params{Kernel: bytes.NewReader(b[:len(b)-1]), E820: memory.E820(128 << 20)})
	if err == nil || !strings.Contains(err.Error(), "kernel image truncated") {
		t.Errorf("truncated kernel: err = %v", err)
	}
	_, err = Load(g, Params{Kernel: bytes.NewReader(b), E820: make([]memory.E820Entry, 129)})
	if err == nil || err.Error() != "e820 map has 129 entries; boot_params holds at most 128" {
		t.Errorf("129 e820 entries: err = %v", err)
	}
	_, err = Load(g, Params{Kernel: bytes.NewReader(b)})
	if err == nil || !strings.Contains(err.Error(), "no e820") {
		t.Errorf("no e820: err = %v", err)
	}
	// A map whose RAM does not cover the kernel.
	_, err = Load(g, Params{Kernel: bytes.NewReader(b), E820: []memory.E820Entry{{Addr: 0, Size: 0x9fc00, Type: memory.E820RAM}}})
	if err == nil || !strings.Contains(err.Error(), "not within one RAM entry") {
		t.Errorf("e820 without high RAM: err = %v", err)
	}
	_, err = Load(g, Params{Kernel: bytes.NewReader(b), E820: memory.E820(128 << 20), Initrd: bytes.NewReader([]byte("short")), InitrdSize: 100})
	if err == nil || err.Error() != "initrd is 5 bytes, not the 100 given" {
		t.Errorf("short initrd: err = %v", err)
	}
}

func TestE820Max(t *testing.T) {
	g := newGuest(t, 128<<20)
	e820 := memory.E820(128 << 20)
	for len(e820) < MaxE820 {
		e820 = append(e820, memory.E820Entry{Addr: 0xd0000000 + uint64(len(e820))*4096, Size: 4096, Type: memory.E820Reserved})
	}
	if _, err := Load(g, Params{Kernel: bytes.NewReader(good().bytes()), E820: e820}); err != nil {
		t.Fatal(err)
	}
	bp := read(t, g, memory.ZeroPage, 4096)
	if bp[0x1e8] != MaxE820 {
		t.Errorf("e820_entries = %d", bp[0x1e8])
	}
	last := 0x2d0 + 20*(MaxE820-1)
	if got := binary.LittleEndian.Uint64(bp[last:]); got != e820[MaxE820-1].Addr {
		t.Errorf("last e820 entry addr = %#x", got)
	}
	if 0x2d0+20*MaxE820 != 0xcd0 {
		t.Error("e820_table does not end at 0xcd0 (eddbuf starts at 0xd00)")
	}
}

// TestPageTables walks the boot page tables the way the MMU does.
func TestPageTables(t *testing.T) {
	g := newGuest(t, 64<<20)
	e, err := SetupLongMode(g)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	entry := func(table, index uint64) uint64 {
		return le.Uint64(read(t, g, table+index*8, 8))
	}
	translate := func(va uint64) (uint64, bool) {
		pml4e := entry(e.CR3&^0xfff, va>>39&0x1ff)
		if pml4e&1 == 0 {
			return 0, false
		}
		pdpte := entry(pml4e&0xffffffffff000, va>>30&0x1ff)
		if pdpte&1 == 0 || pdpte&0x80 != 0 {
			return 0, false
		}
		pde := entry(pdpte&0xffffffffff000, va>>21&0x1ff)
		if pde&1 == 0 || pde&0x80 == 0 || pde&2 == 0 {
			return 0, false
		}
		return pde&0xfffffffe00000 | va&0x1fffff, true
	}
	for _, va := range []uint64{0, memory.ZeroPage, memory.Cmdline + 17, memory.KernelStart + 0x200, 0x1234567, 0x7fffffff,
		memory.PCIHoleStart, 0xfee00000, 0xffffffff} {
		pa, ok := translate(va)
		if !ok || pa != va {
			t.Errorf("translate(%#x) = %#x, %v; want identity", va, pa, ok)
		}
	}
	if _, ok := translate(IdentityMapped); ok {
		t.Errorf("%#x is mapped; only 0-4 GiB should be", uint64(IdentityMapped))
	}
	// The tables live where layout.go says.
	if e.CR3 != memory.PML4 || entry(memory.PML4, 0)&^0xfff != memory.PDPT {
		t.Error("PML4 does not point at memory.PDPT")
	}
	for i := range uint64(4) {
		if entry(memory.PDPT, i)&^0xfff != memory.PageDirs+i*4096 {
			t.Errorf("PDPT[%d] does not point at PageDirs+%d pages", i, i)
		}
	}
	if memory.PageDirs+4*4096 > memory.Cmdline {
		t.Error("page directories overlap the command line")
	}
}

func TestLongModeState(t *testing.T) {
	g := newGuest(t, 64<<20)
	e, err := SetupLongMode(g)
	if err != nil {
		t.Fatal(err)
	}
	if e.CR0&(CR0PE|CR0PG) != CR0PE|CR0PG || e.CR4&CR4PAE == 0 || e.EFER != EFERLME|EFERLMA {
		t.Errorf("CR0 %#x CR4 %#x EFER %#x", e.CR0, e.CR4, e.EFER)
	}
	if e.CR0 != 0x80000011 {
		t.Errorf("CR0 = %#x, want PE|ET|PG", e.CR0)
	}
	if e.GDT != (DTable{Base: memory.BootGDT, Limit: 31}) || e.IDT.Base != memory.BootIDT {
		t.Errorf("GDT %+v IDT %+v", e.GDT, e.IDT)
	}
	if e.GDT.Base+uint64(e.GDT.Limit)+1 > memory.BootIDT {
		t.Error("GDT runs into the IDT")
	}
	gdt := read(t, g, memory.BootGDT, 32)
	le := binary.LittleEndian
	if le.Uint64(gdt[0:]) != 0 || le.Uint64(gdt[8:]) != 0 {
		t.Error("GDT entries 0 and 1 are not null")
	}
	// The descriptors in the GDT are exactly the hidden state we hand KVM.
	if got := DecodeDescriptor(le.Uint64(gdt[0x10:]), 0x10); got != e.CS {
		t.Errorf("GDT[0x10] decodes to %+v, CS is %+v", got, e.CS)
	}
	for _, s := range []Segment{e.DS, e.ES, e.FS, e.GS, e.SS} {
		if got := DecodeDescriptor(le.Uint64(gdt[0x18:]), 0x18); got != s {
			t.Errorf("GDT[0x18] decodes to %+v, data segment is %+v", got, s)
		}
	}
	// Well-known encodings of flat 64-bit code and 4 GiB data.
	if d := le.Uint64(gdt[0x10:]); d != 0x00af9b000000ffff {
		t.Errorf("code descriptor %#016x", d)
	}
	if d := le.Uint64(gdt[0x18:]); d != 0x00cf93000000ffff {
		t.Errorf("data descriptor %#016x", d)
	}
	if e.CS.Selector != 0x10 || e.CS.L != 1 || e.CS.DB != 0 || e.CS.Type != 0xb || e.CS.S != 1 || e.CS.Present != 1 || e.CS.Limit != 0xffffffff {
		t.Errorf("CS = %+v", e.CS)
	}
	if e.DS.Selector != 0x18 || e.SS.Selector != 0x18 || e.DS.Type != 3 || e.DS.DB != 1 || e.DS.L != 0 {
		t.Errorf("DS = %+v SS = %+v", e.DS, e.SS)
	}
	if e.TR.Type != 0xb || e.TR.S != 0 || e.TR.Present != 1 || e.TR.Unusable != 0 {
		t.Errorf("TR = %+v, want a present busy TSS", e.TR)
	}
}

// TestDebianKernel loads a real bzImage, such as Debian's vmlinuz, named by
// BUNKERBUILD_TEST_KERNEL.
func TestDebianKernel(t *testing.T) {
	path := os.Getenv("BUNKERBUILD_TEST_KERNEL")
	if path == "" {
		t.Skip("BUNKERBUILD_TEST_KERNEL is not set: no real kernel to load")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := ParseHeader(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: protocol %s, %q, setup_sects %d, kernel %d bytes, init_size %#x, pref_address %#x, align %#x, xloadflags %#x, cmdline_size %d",
		path, h.ProtocolString(), h.KernelVersion, h.SetupSects, h.KernelSize(), h.InitSize, h.PrefAddress, h.KernelAlignment, h.XLoadFlags, h.CmdlineSize)
	if h.XLoadFlags&XLFKernel64 == 0 || !h.Relocatable {
		t.Errorf("not a relocatable 64-bit kernel")
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if end := h.KernelOffset() + int64(h.KernelSize()); end > st.Size() {
		t.Fatalf("syssize reaches %d bytes past a %d-byte file", end, st.Size())
	}

	const ram = 512 << 20
	g := newGuest(t, ram)
	initrd := bytes.Repeat([]byte("07070100"), 1<<17) // 1 MiB stand-in
	l, err := Load(g, Params{
		Kernel: f, Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
		Cmdline: "console=ttyS0 reboot=k panic=-1", E820: memory.E820(ram), RSDP: memory.ACPIStart,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("footprint %#x-%#x, initrd %#x-%#x", l.Footprint.GPA, l.Footprint.End(), l.Initrd.GPA, l.Initrd.End())
	// The 64-bit entry point of the compressed kernel is at +0x200.
	want := make([]byte, 16)
	if _, err := f.ReadAt(want, h.KernelOffset()+0x200); err != nil {
		t.Fatal(err)
	}
	if got := read(t, g, l.Entry.RIP, 16); !bytes.Equal(got, want) {
		t.Errorf("bytes at RIP %#x = % x, image has % x", l.Entry.RIP, got, want)
	}
	if l.Initrd.GPA < l.Footprint.End() {
		t.Error("initrd overlaps the kernel footprint")
	}

	// Too little RAM for init_size gives a clear error.
	small := newGuest(t, memory.MinSize)
	if h.RuntimeStart(memory.KernelStart)+uint64(h.InitSize) > memory.MinSize {
		_, err := Load(small, Params{Kernel: f, E820: memory.E820(memory.MinSize)})
		if err == nil || !strings.Contains(err.Error(), "kernel needs RAM up to") {
			t.Errorf("64 MiB guest: err = %v", err)
		} else {
			t.Log(err)
		}
	}
}
