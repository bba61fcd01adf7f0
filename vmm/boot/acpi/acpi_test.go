package acpi

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

func newGuest(t *testing.T) *memory.Guest {
	t.Helper()
	g, err := memory.New(memory.MinSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func read(t *testing.T, g *memory.Guest, gpa, n uint64) []byte {
	t.Helper()
	if gpa < memory.ACPIStart || gpa+n > memory.ACPIEnd {
		t.Fatalf("table at %#x+%#x lies outside ACPIStart..ACPIEnd", gpa, n)
	}
	b := make([]byte, n)
	if err := g.ReadAt(b, gpa); err != nil {
		t.Fatal(err)
	}
	return b
}

// tables are the tables reached from the RSDP, by signature.
type tables struct {
	rsdpAddr uint64
	rsdp     []byte
	addr     map[string]uint64
	raw      map[string][]byte
}

// table reads the SDT at gpa and checks its signature, length and checksum.
func table(t *testing.T, g *memory.Guest, gpa uint64, sig string) []byte {
	t.Helper()
	h := read(t, g, gpa, headerSize)
	if string(h[:4]) != sig {
		t.Fatalf("table at %#x has signature %q, want %q", gpa, h[:4], sig)
	}
	b := read(t, g, gpa, uint64(le.Uint32(h[4:])))
	if s := sum(b); s != 0 {
		t.Errorf("%s checksum: bytes sum to %#x, want 0", sig, s)
	}
	if string(b[10:16]) != oemID || string(b[16:24]) != oemTableID || string(b[28:32]) != creatorID {
		t.Errorf("%s header ids %q %q %q", sig, b[10:16], b[16:24], b[28:32])
	}
	return b
}

// walk follows RSDP -> XSDT -> FADT, MADT; FADT -> DSDT, FACS.
func walk(t *testing.T, g *memory.Guest, rsdpAddr uint64) *tables {
	t.Helper()
	ts := &tables{rsdpAddr: rsdpAddr, addr: map[string]uint64{}, raw: map[string][]byte{}}
	if rsdpAddr%16 != 0 || rsdpAddr < memory.ACPIStart {
		t.Errorf("RSDP at %#x: want 16-byte aligned in the BIOS scan area", rsdpAddr)
	}
	r := read(t, g, rsdpAddr, rsdpSize)
	ts.rsdp = r
	if string(r[:8]) != "RSD PTR " || r[15] != 2 || le.Uint32(r[20:]) != rsdpSize {
		t.Fatalf("RSDP = % x", r)
	}
	if sum(r[:20]) != 0 {
		t.Error("RSDP ACPI 1.0 checksum over 20 bytes is wrong")
	}
	if sum(r) != 0 {
		t.Error("RSDP extended checksum over 36 bytes is wrong")
	}
	if le.Uint32(r[16:]) != 0 {
		t.Error("RSDP names an RSDT; there is none")
	}
	xa := le.Uint64(r[24:])
	x := table(t, g, xa, "XSDT")
	ts.addr["XSDT"], ts.raw["XSDT"] = xa, x
	if x[8] != 1 {
		t.Errorf("XSDT revision %d", x[8])
	}
	for off := headerSize; off < len(x); off += 8 {
		a := le.Uint64(x[off:])
		sig := string(read(t, g, a, 4))
		if _, dup := ts.addr[sig]; dup {
			t.Errorf("XSDT lists %s twice", sig)
		}
		ts.addr[sig], ts.raw[sig] = a, table(t, g, a, sig)
	}
	f := ts.raw["FACP"]
	if f == nil {
		t.Fatal("XSDT has no FADT")
	}
	da := le.Uint64(f[fadtXDSDT:])
	if uint64(le.Uint32(f[fadtDSDT:])) != da {
		t.Errorf("FADT DSDT %#x and X_DSDT %#x differ", le.Uint32(f[fadtDSDT:]), da)
	}
	ts.addr["DSDT"], ts.raw["DSDT"] = da, table(t, g, da, "DSDT")
	if fa := le.Uint64(f[fadtXFirmwareCtrl:]); fa != 0 {
		if uint64(le.Uint32(f[fadtFirmwareCtrl:])) != fa {
			t.Error("FADT FIRMWARE_CTRL and X_FIRMWARE_CTRL differ")
		}
		if fa%64 != 0 {
			t.Errorf("FACS at %#x is not 64-byte aligned", fa)
		}
		b := read(t, g, fa, facsSize)
		if string(b[:4]) != "FACS" || le.Uint32(b[4:]) != facsSize {
			t.Errorf("FACS = % x", b)
		}
		ts.addr["FACS"], ts.raw["FACS"] = fa, b
	}
	// No two tables overlap.
	type span struct {
		name   string
		lo, hi uint64
	}
	spans := []span{{"RSDP", rsdpAddr, rsdpAddr + rsdpSize}}
	for n, a := range ts.addr {
		spans = append(spans, span{n, a, a + uint64(len(ts.raw[n]))})
	}
	for i, a := range spans {
		for _, b := range spans[i+1:] {
			if a.lo < b.hi && b.lo < a.hi {
				t.Errorf("%s %#x-%#x overlaps %s %#x-%#x", a.name, a.lo, a.hi, b.name, b.lo, b.hi)
			}
		}
	}
	return ts
}

func build(t *testing.T, cfg Config) (*memory.Guest, *tables) {
	t.Helper()
	g := newGuest(t)
	addr, err := Build(g, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g, walk(t, g, addr)
}

func TestTables(t *testing.T) {
	for _, cfg := range []Config{
		{CPUs: 1, Legacy: true},
		{CPUs: 2, Legacy: true},
		{CPUs: 8},
		{CPUs: MaxCPUs, Legacy: true},
		{CPUs: 4, HWReduced: true},
	} {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			_, ts := build(t, cfg)
			want := []string{"APIC", "DSDT", "FACP", "XSDT"}
			if !cfg.HWReduced {
				want = append(want, "FACS")
			}
			for _, sig := range want {
				if ts.raw[sig] == nil {
					t.Errorf("no %s", sig)
				}
			}
			if len(ts.addr) != len(want) {
				t.Errorf("tables %v, want %v", keys(ts.addr), want)
			}
			if n := len(ts.raw["XSDT"]); n != headerSize+2*8 {
				t.Errorf("XSDT is %d bytes", n)
			}
			if n := len(ts.raw["FACP"]); n != 276 {
				t.Errorf("FADT is %d bytes, want 276 (revision 6)", n)
			}
		})
	}
}

func keys(m map[string]uint64) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	return s
}

// TestFADT decodes the FADT at the offsets of ACPI 6.5 Table 5.9.
func TestFADT(t *testing.T) {
	evt := inventory.MustGet(inventory.ACPIEvt)
	cnt := inventory.MustGet(inventory.ACPICnt)
	for _, tc := range []struct {
		name     string
		cfg      Config
		bootArch uint16
		flags    uint32
	}{
		{"full", Config{CPUs: 2, Legacy: true}, 0x0007, 0x25}, // LEGACY_DEVICES|8042|VGA_NOT_PRESENT; WBINVD|PROC_C1|SLP_BUTTON
		{"no legacy", Config{CPUs: 2}, 0x0024, 0x25},
		{"full, for a handoff", Config{CPUs: 2, Legacy: true, Handoff: true}, 0x0025, 0x25}, // LEGACY_DEVICES|VGA_NOT_PRESENT|CMOS_RTC_NOT_PRESENT                       // VGA_NOT_PRESENT|CMOS_RTC_NOT_PRESENT
		{"hw reduced", Config{CPUs: 2, HWReduced: true}, 0x0024, 0x100035},                  // + PWR_BUTTON|HW_REDUCED_ACPI
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ts := build(t, tc.cfg)
			f := ts.raw["FACP"]
			u8 := func(o int) uint64 { return uint64(f[o]) }
			u16 := func(o int) uint64 { return uint64(le.Uint16(f[o:])) }
			u32 := func(o int) uint64 { return uint64(le.Uint32(f[o:])) }
			u64 := func(o int) uint64 { return le.Uint64(f[o:]) }
			hw := tc.cfg.HWReduced
			pick := func(full, reduced uint64) uint64 {
				if hw {
					return reduced
				}
				return full
			}
			for _, c := range []struct {
				name string
				got  uint64
				want uint64
			}{
				{"Revision", u8(8), 6},
				{"Length", u32(4), 276},
				{"FIRMWARE_CTRL (36)", u32(36), pick(ts.addr["FACS"], 0)},
				{"DSDT (40)", u32(40), ts.addr["DSDT"]},
				{"SCI_INT (46)", u16(46), pick(uint64(evt.IRQ), 0)},
				{"SMI_CMD (48)", u32(48), 0},
				{"ACPI_ENABLE (52)", u8(52), 0},
				{"PM1a_EVT_BLK (56)", u32(56), pick(evt.Base, 0)},
				{"PM1b_EVT_BLK (60)", u32(60), 0},
				{"PM1a_CNT_BLK (64)", u32(64), pick(cnt.Base, 0)},
				{"PM1b_CNT_BLK (68)", u32(68), 0},
				{"PM2_CNT_BLK (72)", u32(72), 0},
				{"PM_TMR_BLK (76)", u32(76), 0},
				{"GPE0_BLK (80)", u32(80), 0},
				{"PM1_EVT_LEN (88)", u8(88), pick(evt.Size, 0)},
				{"PM1_CNT_LEN (89)", u8(89), pick(cnt.Size, 0)},
				{"PM_TMR_LEN (91)", u8(91), 0},
				{"IAPC_BOOT_ARCH (109)", u16(109), uint64(tc.bootArch)},
				{"Flags (112)", u32(112), uint64(tc.flags)},
				{"RESET_REG (116)", u64(116) | u32(124), 0},
				{"FADT Minor Version (131)", u8(131), 0},
				{"X_FIRMWARE_CTRL (132)", u64(132), pick(ts.addr["FACS"], 0)},
				{"X_DSDT (140)", u64(140), ts.addr["DSDT"]},
				// X_PM1a_EVT_BLK GAS at 148: SystemIO, width, offset 0, word access, address.
				{"X_PM1a_EVT_BLK.SpaceID (148)", u8(148), pick(1, 0)},
				{"X_PM1a_EVT_BLK.BitWidth (149)", u8(149), pick(8*evt.Size, 0)},
				{"X_PM1a_EVT_BLK.BitOffset (150)", u8(150), 0},
				{"X_PM1a_EVT_BLK.AccessSize (151)", u8(151), pick(2, 0)},
				{"X_PM1a_EVT_BLK.Address (152)", u64(152), pick(evt.Base, 0)},
				{"X_PM1b_EVT_BLK.Address (164)", u64(164), 0},
				{"X_PM1a_CNT_BLK.SpaceID (172)", u8(172), pick(1, 0)},
				{"X_PM1a_CNT_BLK.BitWidth (173)", u8(173), pick(8*cnt.Size, 0)},
				{"X_PM1a_CNT_BLK.AccessSize (175)", u8(175), pick(2, 0)},
				{"X_PM1a_CNT_BLK.Address (176)", u64(176), pick(cnt.Base, 0)},
				{"X_PM_TMR_BLK.Address (212)", u64(212), 0},
				{"SLEEP_CONTROL_REG.Address (248)", u64(248), 0},
				{"SLEEP_STATUS_REG.Address (260)", u64(260), 0},
				{"Hypervisor Vendor Identity (268)", u64(268), 0},
			} {
				if c.got != c.want {
					t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
				}
			}
		})
	}
}

type madtEntry struct {
	typ  uint8
	body []byte
}

func madtEntries(t *testing.T, m []byte) []madtEntry {
	t.Helper()
	var es []madtEntry
	for off := headerSize + 8; off < len(m); {
		typ, n := m[off], int(m[off+1])
		if n < 2 || off+n > len(m) {
			t.Fatalf("MADT entry at %d: type %d length %d overruns the table", off, typ, n)
		}
		es = append(es, madtEntry{typ, m[off : off+n]})
		off += n
	}
	return es
}

func TestMADT(t *testing.T) {
	ioapic := inventory.MustGet(inventory.IOAPICMem)
	lapic := inventory.MustGet(inventory.LAPICMem)
	sci := inventory.MustGet(inventory.ACPIEvt).IRQ
	for _, tc := range []struct {
		cfg Config
	}{
		{Config{CPUs: 1, Legacy: true}},
		{Config{CPUs: 4, Legacy: true}},
		{Config{CPUs: 16}},
		{Config{CPUs: MaxCPUs}},
		{Config{CPUs: 3, HWReduced: true}},
	} {
		t.Run(fmt.Sprintf("%+v", tc.cfg), func(t *testing.T) {
			_, ts := build(t, tc.cfg)
			m := ts.raw["APIC"]
			if m[8] != madtRevision {
				t.Errorf("MADT revision %d", m[8])
			}
			if got := le.Uint32(m[36:]); uint64(got) != lapic.Base {
				t.Errorf("local APIC address %#x, inventory has %#x", got, lapic.Base)
			}
			wantFlags := uint32(0)
			if tc.cfg.Legacy {
				wantFlags = 1 // PCAT_COMPAT
			}
			if got := le.Uint32(m[40:]); got != wantFlags {
				t.Errorf("MADT flags %#x, want %#x", got, wantFlags)
			}
			count := map[uint8]int{}
			nextID := 0
			for _, e := range madtEntries(t, m) {
				count[e.typ]++
				b := e.body
				switch e.typ {
				case madtLocalAPIC:
					if len(b) != 8 || int(b[2]) != nextID || int(b[3]) != nextID || le.Uint32(b[4:]) != 1 {
						t.Errorf("local APIC entry % x, want UID = APIC ID = %d, enabled", b, nextID)
					}
					nextID++
				case madtIOAPIC:
					if len(b) != 12 || int(b[2]) != tc.cfg.CPUs || uint64(le.Uint32(b[4:])) != ioapic.Base || le.Uint32(b[8:]) != 0 {
						t.Errorf("IOAPIC entry % x, want id %d, address %#x, GSI base 0", b, tc.cfg.CPUs, ioapic.Base)
					}
				case madtIntSrcOverride:
					// Only the SCI: level (bits 3:2 = 11), active high (bits 1:0 = 01).
					if len(b) != 10 || b[2] != 0 || int(b[3]) != sci || int(le.Uint32(b[4:])) != sci || le.Uint16(b[8:]) != 0x000d {
						t.Errorf("override % x, want ISA IRQ %d -> GSI %d, flags 0x000d", b, sci, sci)
					}
				case madtLocalAPICNMI:
					if len(b) != 6 || b[2] != 0xff || le.Uint16(b[3:]) != 0 || b[5] != 1 {
						t.Errorf("local APIC NMI entry % x, want all processors, LINT1", b)
					}
				default:
					t.Errorf("unexpected MADT entry type %d", e.typ)
				}
			}
			wantISO := 1
			if tc.cfg.HWReduced {
				wantISO = 0
			}
			if count[madtLocalAPIC] != tc.cfg.CPUs || count[madtIOAPIC] != 1 || count[madtIntSrcOverride] != wantISO || count[madtLocalAPICNMI] != 1 {
				t.Errorf("entry counts %v for %d CPUs", count, tc.cfg.CPUs)
			}
			if want := headerSize + 8 + 8*tc.cfg.CPUs + 12 + 10*wantISO + 6; len(m) != want {
				t.Errorf("MADT length %d, want %d", len(m), want)
			}
		})
	}
}

func TestDSDTS5(t *testing.T) {
	_, ts := build(t, Config{CPUs: 1, Legacy: true})
	d := ts.raw["DSDT"]
	if d[8] != 2 {
		t.Errorf("DSDT revision %d, want 2", d[8])
	}
	want := []byte{
		0x08, '_', 'S', '5', '_', // NameOp _S5_
		0x12, 0x08, 0x04, // PackageOp, PkgLength 8, NumElements 4
		0x0a, slpTypS5, // BytePrefix SLP_TYPa
		0x0a, slpTypS5, // BytePrefix SLP_TYPb
		0x00, 0x00, // Zero, Zero
	}
	if got := d[headerSize:]; !bytes.HasPrefix(got, want) {
		t.Errorf("DSDT AML = % x\nwant it to start with % x", got, want)
	}
}

// le16 and le32 are the little-endian bytes of v.
func le16(v uint64) []byte { return le.AppendUint16(nil, uint16(v)) }
func le32(v uint64) []byte { return le.AppendUint32(nil, uint32(v)) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestDSDTPCI checks the PCI root bridge's AML byte by byte, assembled
// by hand from ACPI 6.5, 20.2 and 6.4.
func TestDSDTPCI(t *testing.T) {
	cfg := inventory.MustGet(inventory.PCIConfigAddress)
	win := inventory.MustGet(inventory.PCIWindow)
	_, ts := build(t, Config{CPUs: 1, Legacy: true})
	d := ts.raw["DSDT"][headerSize:]
	const s5Len = 14 // Name (_S5, ...), checked by TestDSDTS5
	want := cat(
		[]byte{0x10, 0x48, 0x06}, // ScopeOp, PkgLength 0x68 (2 bytes: 0x8 | 0x06<<4)
		[]byte{0x5c, '_', 'S', 'B', '_'},
		[]byte{0x5b, 0x82, 0x4f, 0x05}, // DeviceOp, PkgLength 0x5f
		[]byte("PCI0"),
		[]byte("\x08_HID\x0c\x41\xd0\x0a\x03"), // DWordPrefix EisaId ("PNP0A03")
		[]byte("\x08_UID\x00"),
		[]byte("\x08_SEG\x00"),
		[]byte("\x08_BBN\x00"),
		[]byte("\x08_CRS"),
		[]byte{0x11, 0x37, 0x0a, 0x34}, // BufferOp, PkgLength 0x37, BytePrefix size 0x34
		// WordBusNumber: type 2, flags MaxFixed|MinFixed, producer, positive decode.
		[]byte{0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00},
		le16(0), le16(0), le16(0), le16(0), le16(1), // _GRA _MIN _MAX _TRA _LEN
		// IO: Decode16, min = max = the address register, alignment 1, 8 ports.
		[]byte{0x47, 0x01}, le16(cfg.Base), le16(cfg.Base), []byte{0x01, 0x08},
		// DWordMemory: type 0, MaxFixed|MinFixed, NonCacheable ReadWrite.
		[]byte{0x87, 0x17, 0x00, 0x00, 0x0c, 0x01},
		le32(0), le32(win.Base), le32(win.End()-1), le32(0), le32(win.Size),
		[]byte{0x79, 0x00}, // End Tag, checksum 0: not checked
	)
	if len(d) < s5Len || !bytes.Equal(d[s5Len:], want) {
		t.Errorf("DSDT AML after _S5 = % x\nwant                 % x", d[min(s5Len, len(d)):], want)
	}
}

func TestAMLEncoding(t *testing.T) {
	for _, tc := range []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{5, []byte{0x0a, 5}},
		{0xff, []byte{0x0a, 0xff}},
		{0x100, []byte{0x0b, 0x00, 0x01}},
		{0x12345678, []byte{0x0c, 0x78, 0x56, 0x34, 0x12}},
		{1 << 32, []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
	} {
		if got := amlInteger(tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("amlInteger(%#x) = % x, want % x", tc.v, got, tc.want)
		}
	}
	for _, tc := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{0x3e, []byte{0x3f}},
		{0x3f, []byte{0x41, 0x04}},        // 0x41 total: two bytes, low nibble 1, then 0x4
		{0xffd, []byte{0x4f, 0xff}},       // 0xfff total
		{0xffe, []byte{0x81, 0x00, 0x01}}, // 0x1001 total needs three bytes
	} {
		if got := pkgLength(tc.n); !bytes.Equal(got, tc.want) {
			t.Errorf("pkgLength(%#x) = % x, want % x", tc.n, got, tc.want)
		}
	}
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

func TestAMLNames(t *testing.T) {
	for _, tc := range []struct {
		path string
		want []byte
	}{
		{"PCI0", []byte("PCI0")},
		{"_SB", []byte("_SB_")},
		{`\_SB_`, []byte("\\_SB_")},
		{`\`, []byte{0x5c, 0x00}},
		{"^^PCI0", []byte("^^PCI0")},
		{`\_SB.PCI0`, []byte("\\\x2e_SB_PCI0")},
		{`\_SB.PCI0.S08`, []byte("\\\x2f\x03_SB_PCI0S08_")},
	} {
		if got := nameString(tc.path); !bytes.Equal(got, tc.want) {
			t.Errorf("nameString(%q) = % x, want % x", tc.path, got, tc.want)
		}
	}
	for _, bad := range []string{"", "PCI00", "pci0", "0PCI", "_SB..PCI0", `\_SB.`, "A-B"} {
		mustPanic(t, fmt.Sprintf("nameString(%q)", bad), func() { nameString(bad) })
	}
	if got, want := nameOp("_UID", amlInteger(0)), []byte("\x08_UID\x00"); !bytes.Equal(got, want) {
		t.Errorf("nameOp = % x, want % x", got, want)
	}
	if got, want := scopeOp(`\`), []byte{0x10, 0x03, 0x5c, 0x00}; !bytes.Equal(got, want) {
		t.Errorf("empty Scope (\\) = % x, want % x", got, want)
	}
	if got, want := deviceOp("DEV", nameOp("_UID", amlInteger(1))), []byte("\x5b\x82\x0b\x44\x45\x56_\x08_UID\x01"); !bytes.Equal(got, want) {
		t.Errorf("Device (DEV) = % x, want % x", got, want)
	}
}

func TestEisaID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want uint32
	}{
		{"PNP0A03", 0x030ad041}, // PCI root bridge
		{"PNP0A08", 0x080ad041}, // PCI Express root bridge
		{"PNP0501", 0x0105d041}, // 16550A UART
		{"ABC1234", 0x34124304}, // A=1 B=2 C=3: 00001 00010 00011 -> 0x0443
		{"ZZZFFFF", 0xffff5a6b}, // Z=26: 11010 11010 11010 -> 0x6b5a
	} {
		if got := eisaID(tc.id); got != tc.want {
			t.Errorf("eisaID(%q) = %#08x, want %#08x", tc.id, got, tc.want)
		}
	}
	if got, want := amlDWord(eisaID("PNP0A03")), []byte{0x0c, 0x41, 0xd0, 0x0a, 0x03}; !bytes.Equal(got, want) {
		t.Errorf("amlDWord(EisaId PNP0A03) = % x, want % x", got, want)
	}
	if got, want := amlDWord(1), []byte{0x0c, 1, 0, 0, 0}; !bytes.Equal(got, want) {
		t.Errorf("amlDWord(1) = % x, want % x: the width is kept", got, want)
	}
	for _, bad := range []string{"PNP0A0", "PNP0A033", "pnp0A03", "PNP0a03", "P1P0A03", "PNP0G03"} {
		mustPanic(t, fmt.Sprintf("eisaID(%q)", bad), func() { eisaID(bad) })
	}
}

func TestResourceTemplate(t *testing.T) {
	if got, want := resourceTemplate(), []byte{0x11, 0x05, 0x0a, 0x02, 0x79, 0x00}; !bytes.Equal(got, want) {
		t.Errorf("empty ResourceTemplate = % x, want % x", got, want)
	}
	if got, want := ioPort(false, 0x3f8, 0x3f8, 8, 8), []byte{0x47, 0x00, 0xf8, 0x03, 0xf8, 0x03, 0x08, 0x08}; !bytes.Equal(got, want) {
		t.Errorf("IO (Decode10, 0x3f8, 0x3f8, 8, 8) = % x, want % x", got, want)
	}
	// WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0xd00, 0xffff, 0, 0xf300)
	// has type 1 and type-specific flags 3 (EntireRange).
	w := addrSpace{typ: 1, flags: addrMinFixed | addrMaxFixed, typeFlags: 3, min: 0xd00, max: 0xffff, length: 0xf300}.word()
	if want := []byte{0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0x00, 0x0d, 0xff, 0xff, 0, 0, 0x00, 0xf3}; !bytes.Equal(w, want) {
		t.Errorf("WordIO = % x, want % x", w, want)
	}
	// A consumer, subtractively decoded, with neither end fixed.
	dw := addrSpace{flags: addrConsumer | addrSubDecode, typeFlags: memReadWrite, gran: 0xfff, min: 0x1000, max: 0x1fffff, tra: 0x10, length: 0x2000}.dword()
	want := cat([]byte{0x87, 0x17, 0x00, 0x00, 0x03, 0x01}, le32(0xfff), le32(0x1000), le32(0x1fffff), le32(0x10), le32(0x2000))
	if !bytes.Equal(dw, want) {
		t.Errorf("DWordMemory = % x, want % x", dw, want)
	}
	fixed := addrMinFixed | addrMaxFixed
	mustPanic(t, "a fixed range whose length disagrees", func() { addrSpace{flags: uint8(fixed), min: 0, max: 0, length: 2}.word() })
	mustPanic(t, "a fixed range with a granularity", func() { addrSpace{flags: uint8(fixed), gran: 1, min: 0, max: 0, length: 1}.dword() })
	mustPanic(t, "a Word descriptor past 16 bits", func() { addrSpace{min: 0x10000}.word() })
	mustPanic(t, "a DWord descriptor past 32 bits", func() { addrSpace{max: 1 << 32}.dword() })

	// A buffer of 0x40 bytes: 0x42 bytes after the PkgLength, which with
	// its own 2 bytes is 0x44.
	big := bufferOp(make([]byte, 0x40))
	if want := []byte{0x11, 0x44, 0x04, 0x0a, 0x40}; !bytes.HasPrefix(big, want) || len(big) != 5+0x40 {
		t.Errorf("Buffer of 0x40 bytes starts % x, is %d bytes; want % x, %d bytes", big[:5], len(big), want, 5+0x40)
	}
}

func TestPCIResources(t *testing.T) {
	addr := inventory.MustGet(inventory.PCIConfigAddress)
	data := inventory.MustGet(inventory.PCIConfigData)
	win := inventory.MustGet(inventory.PCIWindow)
	p, err := pciResources(addr, data, win)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(p.cfgPort) != addr.Base || p.cfgLen != 8 || uint64(p.winBase) != win.Base || uint64(p.winSize) != win.Size {
		t.Errorf("pciResources = %+v from %s, %s, %s", p, addr, data, win)
	}
	moved := func(e inventory.Entry, f func(*inventory.Entry)) inventory.Entry { f(&e); return e }
	for _, tc := range []struct {
		name            string
		addr, data, win inventory.Entry
		errHas          string
	}{
		{"gap", addr, moved(data, func(e *inventory.Entry) { e.Base += 4 }), win, "does not follow"},
		{"reversed", data, addr, win, "does not follow"},
		{"short address register", moved(addr, func(e *inventory.Entry) { e.Size = 2 }), data, win, "not a 4-port I/O range"},
		{"data in MMIO", addr, moved(data, func(e *inventory.Entry) { e.Space = inventory.SpaceMMIO }), win, "not a 4-port I/O range"},
		{"ports past 0xffff", moved(addr, func(e *inventory.Entry) { e.Base = 0xfffe }), data, win, "not a 4-port I/O range"},
		{"window above 4 GiB", addr, data, moved(win, func(e *inventory.Entry) { e.Base = 1 << 32 }), "not a 32-bit MMIO range"},
		{"window crossing 4 GiB", addr, data, moved(win, func(e *inventory.Entry) { e.Size = 1<<32 - e.Base + 1 }), "not a 32-bit MMIO range"},
		{"empty window", addr, data, moved(win, func(e *inventory.Entry) { e.Size = 0 }), "not a 32-bit MMIO range"},
		{"window in I/O space", addr, data, moved(win, func(e *inventory.Entry) { e.Space = inventory.SpacePIO }), "not a 32-bit MMIO range"},
	} {
		if _, err := pciResources(tc.addr, tc.data, tc.win); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("%s: pciResources err = %v, want %q", tc.name, err, tc.errHas)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	g := newGuest(t)
	for _, tc := range []struct {
		cfg    Config
		errHas string
	}{
		{Config{CPUs: 0}, "0 vCPUs, want 1 to 254"},
		{Config{CPUs: MaxCPUs + 1}, "255 vCPUs"},
		{Config{CPUs: 1, Legacy: true, HWReduced: true}, "cannot have the PC legacy devices"},
	} {
		if _, err := Build(g, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("Build(%+v) err = %v, want %q", tc.cfg, err, tc.errHas)
		}
	}
}

func TestForProfile(t *testing.T) {
	if c := ForProfile(inventory.Full, 2); !c.Legacy || c.CPUs != 2 || c.HWReduced {
		t.Errorf("full: %+v", c)
	}
	if c := ForProfile(inventory.Minimal, 1); c.Legacy || c.HWReduced {
		t.Errorf("minimal: %+v", c)
	}
}

// TestIASL disassembles the tables with ACPICA's iasl, when it is
// installed (Debian package acpica-tools), and checks that it finds no
// errors and reads back the values we meant.
func TestIASL(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl not installed (apt-get install acpica-tools): skipping the disassembler cross-check")
	}
	for _, cfg := range []Config{{CPUs: 2, Legacy: true}, {CPUs: 2, HWReduced: true}} {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			_, ts := build(t, cfg)
			dir := t.TempDir()
			// The RSDP is left out: iasl 20200925 does not disassemble a
			// bare RSDP ("does not contain a valid ACPI table"); walk
			// checks it.
			files := map[string][]byte{}
			for sig, b := range ts.raw {
				files[strings.ToLower(sig)] = b
			}
			out := map[string]string{}
			for name, b := range files {
				p := filepath.Join(dir, name+".dat")
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
				cmd := exec.Command(iasl, "-d", p)
				cmd.Dir = dir
				msg, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("iasl -d %s: %v\n%s", name, err, msg)
				}
				dsl, err := os.ReadFile(filepath.Join(dir, name+".dsl"))
				if err != nil {
					t.Fatalf("iasl wrote no %s.dsl: %v\n%s", name, err, msg)
				}
				s := string(dsl)
				out[name] = s
				if name == "dsdt" {
					// Compile the disassembly back, without iasl's
					// optimizations (which would drop the root prefix
					// of \_SB), and compare the AML byte for byte.
					cmd := exec.Command(iasl, "-oa", "-p", "dsdt-again", name+".dsl")
					cmd.Dir = dir
					if msg, err := cmd.CombinedOutput(); err != nil {
						t.Errorf("iasl -oa %s.dsl: %v\n%s", name, err, msg)
					} else if again, err := os.ReadFile(filepath.Join(dir, "dsdt-again.aml")); err != nil {
						t.Errorf("iasl compiled no dsdt-again.aml: %v\n%s", err, msg)
					} else if !bytes.Equal(again[min(headerSize, len(again)):], b[headerSize:]) {
						t.Errorf("the DSDT's disassembly compiles to other AML:\n% x\nwant\n% x", again[min(headerSize, len(again)):], b[headerSize:])
					}
				}
				for _, bad := range []string{"Invalid", "Incorrect", "**** ", "Error", "Warning"} {
					if strings.Contains(s, bad) || strings.Contains(string(msg), bad) {
						t.Errorf("iasl on %s reports %q:\n%s\n%s", name, bad, msg, s)
					}
				}
			}
			evt := inventory.MustGet(inventory.ACPIEvt)
			pciCfg := inventory.MustGet(inventory.PCIConfigAddress)
			pciWin := inventory.MustGet(inventory.PCIWindow)
			want := map[string][]string{
				"dsdt": {
					"Name (_S5, Package (0x04)", fmt.Sprintf("{ 0x%02X, 0x%02X, Zero, Zero })", slpTypS5, slpTypS5),
					`Scope (\_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03") /* PCI Bus */)`,
					"Name (_UID, Zero)", "Name (_SEG, Zero)", "Name (_BBN, Zero)",
					"Name (_CRS, ResourceTemplate () // _CRS: Current Resource Settings {",
					// Bus 0 only.
					"WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, // Granularity " +
						"0x0000, // Range Minimum 0x0000, // Range Maximum 0x0000, // Translation Offset 0x0001, // Length",
					// The address register and the data window: exactly
					// the 8 ports Linux drops from the bridge's windows.
					fmt.Sprintf("IO (Decode16, 0x%04X, // Range Minimum 0x%04X, // Range Maximum 0x01, // Alignment 0x08, // Length )",
						pciCfg.Base, pciCfg.Base),
					fmt.Sprintf("DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, "+
						"0x00000000, // Granularity 0x%08X, // Range Minimum 0x%08X, // Range Maximum "+
						"0x00000000, // Translation Offset 0x%08X, // Length ,, , AddressRangeMemory, TypeStatic) }) } }",
						pciWin.Base, pciWin.End()-1, pciWin.Size),
				},
				"apic": {fmt.Sprintf("Local Apic Address : %08X", inventory.MustGet(inventory.LAPICMem).Base)},
				"facp": {"Revision : 06"},
			}
			if !cfg.HWReduced {
				want["facp"] = append(want["facp"],
					fmt.Sprintf("SCI Interrupt : %04X", evt.IRQ),
					fmt.Sprintf("PM1A Event Block Address : %08X", evt.Base),
					"Hardware Reduced (V5) : 0")
				want["apic"] = append(want["apic"], fmt.Sprintf("Interrupt : %08X", evt.IRQ), "Trigger Mode : 3")
			} else {
				want["facp"] = append(want["facp"], "Hardware Reduced (V5) : 1")
			}
			for name, subs := range want {
				norm := strings.Join(strings.Fields(out[name]), " ")
				for _, s := range subs {
					if !strings.Contains(norm, s) {
						t.Errorf("iasl's %s.dsl lacks %q:\n%s", name, s, out[name])
					}
				}
			}
		})
	}
}
