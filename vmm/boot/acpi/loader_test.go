package acpi

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var loaderConfigs = []Config{
	{CPUs: 1, Legacy: true},
	{CPUs: 2, Legacy: true, Handoff: true},
	{CPUs: 8},
	{CPUs: MaxCPUs, Legacy: true},
	{CPUs: 4, HWReduced: true},
}

// firmware runs the loader commands for a Loadable the way a firmware
// does, on its own copies of the blobs: ALLOCATE every file, then
// ADD_POINTER for each pointer, then ADD_CHECKSUM for each checksum.
type firmware int

const (
	// seaBIOS (src/fw/romfile_loader.c) subtracts the range's sum from
	// the checksum byte.
	seaBIOS firmware = iota
	// ovmf (QemuFwCfgAcpiPlatformDxe) stores the negated sum of the
	// range, the checksum byte included, in the checksum byte.
	ovmf
)

func (fw firmware) String() string { return [...]string{"SeaBIOS", "OVMF"}[fw] }

func (fw firmware) load(t *testing.T, l *Loadable, base [numFiles]uint64) [numFiles][]byte {
	t.Helper()
	var out [numFiles][]byte
	for f := range numFiles {
		if a := uint64(f.Align()); a == 0 || a&(a-1) != 0 || base[f]%a != 0 {
			t.Fatalf("ALLOCATE %s at %#x: alignment %d", f.Name(), base[f], a)
		}
		out[f] = bytes.Clone(l.Data(f))
	}
	for _, p := range l.Pointers {
		if p.File >= numFiles || p.Target >= numFiles {
			t.Fatalf("ADD_POINTER %+v names no file", p)
		}
		b := out[p.File]
		n := uint64(p.Size)
		if n != 1 && n != 2 && n != 4 && n != 8 || uint64(p.Offset)+n > uint64(len(b)) {
			t.Fatalf("ADD_POINTER %+v: bad size or outside the %d bytes of %s", p, len(b), p.File)
		}
		var v [8]byte
		copy(v[:], b[p.Offset:uint64(p.Offset)+n])
		le.PutUint64(v[:], le.Uint64(v[:])+base[p.Target])
		copy(b[p.Offset:uint64(p.Offset)+n], v[:n])
	}
	for _, c := range l.Checksums {
		b := out[c.File]
		end := uint64(c.Start) + uint64(c.Length)
		if uint64(c.Offset) >= uint64(len(b)) || end > uint64(len(b)) {
			t.Fatalf("ADD_CHECKSUM %+v outside the %d bytes of %s", c, len(b), c.File)
		}
		switch fw {
		case seaBIOS:
			b[c.Offset] -= sum(b[c.Start:end])
		case ovmf:
			b[c.Offset] = -sum(b[c.Start:end])
		}
	}
	return out
}

// fakeMem is guest memory holding only the blobs a firmware allocated.
type fakeMem struct {
	base [numFiles]uint64
	data [numFiles][]byte
}

// read returns the n bytes at addr, which must lie within one blob.
func (m *fakeMem) read(t *testing.T, addr, n uint64) []byte {
	t.Helper()
	for f, b := range m.data {
		if addr >= m.base[f] && addr+n <= m.base[f]+uint64(len(b)) {
			return b[addr-m.base[f] : addr-m.base[f]+n]
		}
	}
	t.Fatalf("%#x+%#x lies outside every blob the firmware allocated", addr, n)
	return nil
}

// inTables fails unless addr..addr+n lies in the tables blob.
func (m *fakeMem) inTables(t *testing.T, what string, addr, n uint64) {
	t.Helper()
	if lo := m.base[TablesFile]; addr < lo || addr+n > lo+uint64(len(m.data[TablesFile])) {
		t.Errorf("%s at %#x+%#x lies outside the tables blob at %#x", what, addr, n, lo)
	}
}

// sdtAt reads the table at addr and checks its signature and checksum.
func (m *fakeMem) sdtAt(t *testing.T, addr uint64, sig string) []byte {
	t.Helper()
	h := m.read(t, addr, headerSize)
	if string(h[:4]) != sig {
		t.Fatalf("table at %#x has signature %q, want %q", addr, h[:4], sig)
	}
	b := m.read(t, addr, uint64(le.Uint32(h[4:])))
	m.inTables(t, sig, addr, uint64(len(b)))
	if s := sum(b); s != 0 {
		t.Errorf("%s at %#x: bytes sum to %#x, want 0", sig, addr, s)
	}
	return b
}

// parse follows the tables from the RSDP at rsdpAddr, as an OS does.
func (m *fakeMem) parse(t *testing.T, rsdpAddr uint64) *tables {
	t.Helper()
	ts := &tables{rsdpAddr: rsdpAddr, addr: map[string]uint64{}, raw: map[string][]byte{}}
	r := m.read(t, rsdpAddr, rsdpSize)
	ts.rsdp = r
	if string(r[:8]) != "RSD PTR " || r[15] != 2 || le.Uint32(r[20:]) != rsdpSize {
		t.Fatalf("RSDP = % x", r)
	}
	if sum(r[:rsdpV1Size]) != 0 || sum(r) != 0 {
		t.Errorf("RSDP checksums wrong: % x", r)
	}
	if le.Uint32(r[rsdpRsdtAddress:]) != 0 {
		t.Error("RSDP names an RSDT; there is none")
	}
	xa := le.Uint64(r[rsdpXsdtAddress:])
	x := m.sdtAt(t, xa, "XSDT")
	ts.addr["XSDT"], ts.raw["XSDT"] = xa, x
	for off := headerSize; off < len(x); off += 8 {
		a := le.Uint64(x[off:])
		sig := string(m.read(t, a, 4))
		if _, dup := ts.addr[sig]; dup {
			t.Errorf("XSDT lists %s twice", sig)
		}
		ts.addr[sig], ts.raw[sig] = a, m.sdtAt(t, a, sig)
	}
	f := ts.raw["FACP"]
	if f == nil {
		t.Fatal("XSDT has no FADT")
	}
	da := le.Uint64(f[fadtXDSDT:])
	if uint64(le.Uint32(f[fadtDSDT:])) != da {
		t.Errorf("FADT DSDT %#x and X_DSDT %#x differ", le.Uint32(f[fadtDSDT:]), da)
	}
	ts.addr["DSDT"], ts.raw["DSDT"] = da, m.sdtAt(t, da, "DSDT")
	fa := le.Uint64(f[fadtXFirmwareCtrl:])
	if uint64(le.Uint32(f[fadtFirmwareCtrl:])) != fa {
		t.Errorf("FADT FIRMWARE_CTRL %#x and X_FIRMWARE_CTRL %#x differ", le.Uint32(f[fadtFirmwareCtrl:]), fa)
	}
	if fa != 0 {
		b := m.read(t, fa, facsSize)
		m.inTables(t, "FACS", fa, facsSize)
		if string(b[:4]) != "FACS" || le.Uint32(b[4:]) != facsSize {
			t.Errorf("FACS at %#x = % x", fa, b)
		}
		if fa%facsAlign != 0 {
			t.Errorf("FACS at %#x is not 64-byte aligned", fa)
		}
		ts.addr["FACS"], ts.raw["FACS"] = fa, b
	}
	return ts
}

// basePairs are where a firmware might allocate the RSDP (in the F
// segment) and the tables (anywhere below 4 GiB).
var basePairs = [][numFiles]uint64{
	{RSDPFile: 0xf5a10, TablesFile: 0x1ff00000},
	{RSDPFile: 0xf0000, TablesFile: 0x7ffe0040},
	{RSDPFile: 0xfffd0, TablesFile: 0xbff00000},
}

// TestLoadableInFirmware places the relocatable tables as SeaBIOS and
// OVMF would, at several addresses, and follows them from the RSDP.
func TestLoadableInFirmware(t *testing.T) {
	for _, cfg := range loaderConfigs {
		l, err := Relocatable(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, base := range basePairs {
			for _, fw := range []firmware{seaBIOS, ovmf} {
				t.Run(fmt.Sprintf("%+v/%s/rsdp=%#x,tables=%#x", cfg, fw, base[RSDPFile], base[TablesFile]), func(t *testing.T) {
					for f := range numFiles {
						lo, hi := base[f], base[f]+uint64(len(l.Data(f)))
						if f.Zone() == ZoneFSeg && (lo < 0xf0000 || hi > 0x100000) || hi > 1<<32 {
							t.Fatalf("test bases: %s at %#x-%#x is outside zone %d", f, lo, hi, f.Zone())
						}
					}
					m := &fakeMem{base: base, data: fw.load(t, l, base)}
					ts := m.parse(t, base[RSDPFile])
					want := []string{"APIC", "DSDT", "FACP", "XSDT"}
					if !cfg.HWReduced {
						want = append(want, "FACS")
					}
					slices.Sort(want)
					if got := sortedKeys(ts.addr); !slices.Equal(got, want) {
						t.Errorf("tables %s, want %v", got, want)
					}
					if n := len(ts.raw["XSDT"]); n != headerSize+2*8 {
						t.Errorf("XSDT is %d bytes", n)
					}
				})
			}
		}
	}
}

func sortedKeys(m map[string]uint64) []string { return slices.Sorted(maps.Keys(m)) }

// pointerFields are the offsets and sizes of the address fields of each
// table, from the ACPI specification, for comparing tables whatever their
// addresses.
func pointerFields(sig string, n int) [][2]int {
	switch sig {
	case "RSDP":
		return [][2]int{{rsdpRsdtAddress, 4}, {rsdpXsdtAddress, 8}}
	case "XSDT":
		var fs [][2]int
		for off := headerSize; off < n; off += 8 {
			fs = append(fs, [2]int{off, 8})
		}
		return fs
	case "FACP":
		return [][2]int{{fadtFirmwareCtrl, 4}, {fadtDSDT, 4}, {fadtXFirmwareCtrl, 8}, {fadtXDSDT, 8}}
	}
	return nil
}

// TestLoadableMatchesBuild checks that a firmware placing the relocatable
// tables gets, table for table, what Build writes: the same bytes but for
// the addresses and the checksums, addresses that name the same tables,
// and the same distances between the tables.
func TestLoadableMatchesBuild(t *testing.T) {
	for _, cfg := range loaderConfigs {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			_, built := build(t, cfg)
			l, err := Relocatable(cfg)
			if err != nil {
				t.Fatal(err)
			}
			base := basePairs[0]
			m := &fakeMem{base: base, data: seaBIOS.load(t, l, base)}
			loaded := m.parse(t, base[RSDPFile])

			if a, b := sortedKeys(built.addr), sortedKeys(loaded.addr); !reflect.DeepEqual(a, b) {
				t.Fatalf("Build wrote %v, the firmware placed %v", a, b)
			}
			sigAt := func(ts *tables) map[uint64]string {
				s := map[uint64]string{}
				for sig, a := range ts.addr {
					s[a] = sig
				}
				return s
			}
			builtSig, loadedSig := sigAt(built), sigAt(loaded)
			raw := func(ts *tables, sig string) []byte {
				if sig == "RSDP" {
					return ts.rsdp
				}
				return ts.raw[sig]
			}
			for _, sig := range append(sortedKeys(built.addr), "RSDP") {
				b, f := bytes.Clone(raw(built, sig)), bytes.Clone(raw(loaded, sig))
				if len(b) != len(f) {
					t.Errorf("%s: Build wrote %d bytes, the firmware placed %d", sig, len(b), len(f))
					continue
				}
				// The addresses must name the same tables; then they
				// and the checksums are masked.
				for _, pf := range pointerFields(sig, len(b)) {
					off, n := pf[0], pf[1]
					get := func(t []byte) uint64 {
						if n == 4 {
							return uint64(le.Uint32(t[off:]))
						}
						return le.Uint64(t[off:])
					}
					bs, fs := builtSig[get(b)], loadedSig[get(f)]
					if get(b) == 0 && get(f) == 0 {
						bs, fs = "none", "none"
					}
					if bs == "" || bs != fs {
						t.Errorf("%s field at %d: Build's %#x is %q, the firmware's %#x is %q", sig, off, get(b), bs, get(f), fs)
					}
					clear(b[off : off+n])
					clear(f[off : off+n])
				}
				switch sig {
				case "RSDP":
					b[rsdpChecksum], f[rsdpChecksum], b[rsdpExtChecksum], f[rsdpExtChecksum] = 0, 0, 0, 0
				case "FACS":
				default:
					b[headerChecksum], f[headerChecksum] = 0, 0
				}
				if !bytes.Equal(b, f) {
					t.Errorf("%s, addresses and checksums masked:\nBuild    % x\nfirmware % x", sig, b, f)
				}
				if sig != "RSDP" {
					if db, df := built.addr[sig]-built.addr["XSDT"], loaded.addr[sig]-loaded.addr["XSDT"]; db != df {
						t.Errorf("%s is %#x from the XSDT in Build's layout, %#x in the firmware's", sig, db, df)
					}
				}
			}
		})
	}
}

// TestLoadablePointers checks that every address field the tables hold is
// declared as a Pointer, once and with its size and target: the blobs laid
// out as if at other addresses differ from the relocatable ones in exactly
// the declared pointer fields, and patching the declared pointers
// reproduces them.
func TestLoadablePointers(t *testing.T) {
	bases := append([][numFiles]uint64{
		// High bits set: a field declared with 4 bytes but written with
		// 8 differs above its 4.
		{RSDPFile: 0x5a5a5a5a_5a5a5a50, TablesFile: 0x12345678_9abcdec0},
	}, basePairs...)
	for _, cfg := range loaderConfigs {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			l, err := Relocatable(cfg)
			if err != nil {
				t.Fatal(err)
			}
			zero, err := lay(cfg, [numFiles]uint64{})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(l, zero) {
				t.Fatal("Relocatable is not the layout at address 0")
			}

			// Declared fields: within their blob, sized 4 or 8, no two
			// overlapping; checksum bytes 0 and apart from the pointers.
			var declared [numFiles][]string
			for f := range numFiles {
				declared[f] = make([]string, len(l.Data(f)))
			}
			mark := func(what string, f File, off, n uint64) {
				if f >= numFiles || off+n > uint64(len(declared[f])) {
					t.Fatalf("%s lies outside its blob", what)
				}
				for i := off; i < off+n; i++ {
					if declared[f][i] != "" {
						t.Errorf("%s overlaps %s", what, declared[f][i])
					}
					declared[f][i] = what
				}
			}
			for _, p := range l.Pointers {
				if p.Size != 4 && p.Size != 8 {
					t.Errorf("pointer %+v is not 4 or 8 bytes", p)
				}
				if p.Target != TablesFile {
					t.Errorf("pointer %+v: every table is in %s", p, TablesFile)
				}
				mark(fmt.Sprintf("pointer %+v", p), p.File, uint64(p.Offset), uint64(p.Size))
			}
			for _, c := range l.Checksums {
				mark(fmt.Sprintf("checksum %+v", c), c.File, uint64(c.Offset), 1)
				if b := l.Data(c.File)[c.Offset]; b != 0 {
					t.Errorf("checksum %+v: byte is %#x, want 0 (OVMF and QEMU's convention)", c, b)
				}
			}

			for _, base := range bases {
				at, err := lay(cfg, base)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(at.Pointers, l.Pointers) || !reflect.DeepEqual(at.Checksums, l.Checksums) {
					t.Errorf("at %#x the declarations change", base)
				}
				patched := seaBIOS.load(t, l, base)
				for f := range numFiles {
					a, b := l.Data(f), at.Data(f)
					if len(a) != len(b) {
						t.Fatalf("%s: %d bytes at address 0, %d at %#x", f, len(a), len(b), base)
					}
					for i := range a {
						if a[i] != b[i] && !strings.HasPrefix(declared[f][i], "pointer") {
							t.Errorf("%s byte %#x differs between addresses 0 and %#x (%#x, %#x) but is in no declared pointer", f, i, base, a[i], b[i])
						}
						if patched[f][i] != b[i] && !strings.HasPrefix(declared[f][i], "checksum") {
							t.Errorf("%s byte %#x: the patched pointers give %#x, the layout at %#x %#x (%s)", f, i, patched[f][i], base, b[i], declared[f][i])
						}
					}
				}
			}

			// The expected count: per table, the specification's fields.
			want := 1 // the RSDP's XsdtAddress
			want += 2 // XSDT: FADT, MADT
			want += 2 // FADT: DSDT, X_DSDT
			if !cfg.HWReduced {
				want += 2 // FADT: FIRMWARE_CTRL, X_FIRMWARE_CTRL
			}
			if len(l.Pointers) != want {
				t.Errorf("%d pointers, want %d: %+v", len(l.Pointers), want, l.Pointers)
			}
			// DSDT, MADT, FADT, XSDT, and the RSDP's two.
			if len(l.Checksums) != 6 {
				t.Errorf("%d checksums, want 6: %+v", len(l.Checksums), l.Checksums)
			}
		})
	}
}

func TestFiles(t *testing.T) {
	for _, tc := range []struct {
		f     File
		name  string
		align uint32
		zone  Zone
	}{
		{RSDPFile, "etc/acpi/rsdp", 16, ZoneFSeg},
		{TablesFile, "etc/acpi/tables", 64, ZoneHigh},
	} {
		if tc.f.Name() != tc.name || tc.f.Align() != tc.align || tc.f.Zone() != tc.zone {
			t.Errorf("file %d: %q align %d zone %d, want %q %d %d", tc.f, tc.f.Name(), tc.f.Align(), tc.f.Zone(), tc.name, tc.align, tc.zone)
		}
	}
	// The RSDP's 20-byte checksum comes before the 36-byte one, which
	// covers it.
	l, err := Relocatable(Config{CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	v1, ext := -1, -1
	for i, c := range l.Checksums {
		if c.File == RSDPFile && c.Offset == rsdpChecksum && c.Start == 0 && c.Length == rsdpV1Size {
			v1 = i
		}
		if c.File == RSDPFile && c.Offset == rsdpExtChecksum && c.Start == 0 && c.Length == rsdpSize {
			ext = i
		}
	}
	if v1 < 0 || ext < 0 || v1 > ext {
		t.Errorf("RSDP checksums at %d and %d of %+v, want the 20-byte one first", v1, ext, l.Checksums)
	}
}

func TestLinkErrors(t *testing.T) {
	l, err := Relocatable(Config{CPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		base   [numFiles]uint64
		errHas string
	}{
		{[numFiles]uint64{RSDPFile: 0xe0008, TablesFile: 0x100000}, "16-byte aligned"},
		{[numFiles]uint64{RSDPFile: 0xe0000, TablesFile: 0x100020}, "64-byte aligned"},
		{[numFiles]uint64{RSDPFile: 0xe0000, TablesFile: 1 << 32}, "does not fit in 32 bits"},
	} {
		if _, err := l.link(tc.base); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("link(%#x) err = %v, want %q", tc.base, err, tc.errHas)
		}
	}
}
