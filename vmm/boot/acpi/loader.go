package acpi

import (
	"bytes"
	"errors"
	"fmt"
	"math"
)

// The tables in relocatable form, for a firmware that places them itself
// and learns where from QEMU's linker/loader protocol: the fw_cfg file
// "etc/table-loader" holds commands that ALLOCATE each blob (a fw_cfg
// file) in a memory zone at an alignment, ADD_POINTER (add the address a
// blob was allocated at to the little-endian field at an offset of a
// blob), and ADD_CHECKSUM (make a range of a blob sum to 0 by changing one
// byte in it). QEMU's hw/acpi/bios-linker-loader.c emits them, SeaBIOS's
// src/fw/romfile_loader.c and OVMF's QemuFwCfgAcpiPlatformDxe run them.
//
// A firmware runs the commands in order. For these tables the commands
// are: ALLOCATE for each File (RSDPFile, TablesFile), then ADD_POINTER
// for each of Loadable.Pointers, then ADD_CHECKSUM for each of
// Loadable.Checksums in their order: a checksum must see every pointer in
// its range already patched, and the RSDP's 36-byte checksum covers its
// 20-byte one, which comes first.
//
// The checksum bytes are 0 in the blobs. SeaBIOS subtracts the range's sum
// from the checksum byte, which is right whatever the byte held, but OVMF
// stores the negated sum of the range, byte included, which is right only
// if the byte was 0; QEMU asserts it is 0 when it declares a checksum.

// File is one of the blobs the firmware loads the tables from.
type File uint8

const (
	// RSDPFile holds the RSDP alone, which must be where an OS scans for
	// it: in the firmware's F segment (0xF0000-0xFFFFF), 16-byte aligned.
	RSDPFile File = iota
	// TablesFile holds every other table; the FACS at offset 0 or
	// another multiple of 64, so the blob is allocated 64-byte aligned.
	TablesFile

	numFiles
)

// Zone is where the firmware allocates a File, with the values of the
// ALLOCATE command's zone byte.
type Zone uint8

const (
	ZoneHigh Zone = 1 // anywhere in RAM below 4 GiB the firmware reserves
	ZoneFSeg Zone = 2 // in the F segment, 0xF0000-0xFFFFF
)

// Name is f's fw_cfg file name, which the loader commands name it by.
func (f File) Name() string {
	switch f {
	case RSDPFile:
		return "etc/acpi/rsdp"
	case TablesFile:
		return "etc/acpi/tables"
	}
	return fmt.Sprintf("acpi.File(%d)", f)
}

// Align is the alignment f must be allocated at, a power of two: the
// RSDP's 16 bytes for an OS's scan, the FACS's 64 bytes for the tables.
func (f File) Align() uint32 {
	if f == TablesFile {
		return facsAlign
	}
	return tableAlign
}

// Zone is the zone f must be allocated in.
func (f File) Zone() Zone {
	if f == RSDPFile {
		return ZoneFSeg
	}
	return ZoneHigh
}

// String is f's Name.
func (f File) String() string { return f.Name() }

// Pointer is a field that holds an offset into Target until the firmware
// adds the address it allocated Target at: an ADD_POINTER command, with
// File as its destination and Target as its source.
type Pointer struct {
	File   File   // the blob holding the field
	Offset uint32 // of the field in File
	Size   uint8  // of the field in bytes: 4 or 8, little-endian
	Target File   // the blob the field points into
}

// Checksum is a byte at Offset of File that must make the Length bytes
// from Start, which include it, sum to 0 once the pointers are patched:
// an ADD_CHECKSUM command.
type Checksum struct {
	File                  File
	Offset, Start, Length uint32
}

// Loadable is the tables in relocatable form. Every pointer field holds
// an offset into its target blob and every checksum byte is 0; Pointers
// lists every pointer field once, Checksums every checksum once, in the
// order a firmware must compute them.
type Loadable struct {
	RSDP      []byte // the RSDPFile blob
	Tables    []byte // the TablesFile blob
	Pointers  []Pointer
	Checksums []Checksum
}

// Data is the blob of file f.
func (l *Loadable) Data(f File) []byte {
	switch f {
	case RSDPFile:
		return l.RSDP
	case TablesFile:
		return l.Tables
	}
	return nil
}

// Relocatable returns the tables for cfg in relocatable form, for a
// firmware to place through fw_cfg's "etc/table-loader". They are laid out
// as Build lays them out.
func Relocatable(cfg Config) (*Loadable, error) {
	return lay(cfg, [numFiles]uint64{})
}

// layout builds the blobs, each as if allocated at base[f], and records
// the pointer fields and checksums it writes.
type layout struct {
	l    Loadable
	base [numFiles]uint64
}

// addr is the address of offset off of file f.
func (b *layout) addr(f File, off uint32) uint64 { return b.base[f] + uint64(off) }

// table appends t to the tables blob at the next multiple of align and
// returns its offset.
func (b *layout) table(t []byte, align uint32) uint32 {
	off := alignUp(uint64(len(b.l.Tables)), uint64(align))
	b.l.Tables = append(b.l.Tables, make([]byte, off-uint64(len(b.l.Tables)))...)
	b.l.Tables = append(b.l.Tables, t...)
	return uint32(off)
}

// sdt appends a table with the common header, declares its checksum, and
// returns its offset.
func (b *layout) sdt(t []byte) uint32 {
	off := b.table(t, tableAlign)
	b.checksum(TablesFile, off+headerChecksum, off, uint32(len(t)))
	return off
}

func (b *layout) pointer(f File, off uint32, size uint8, target File) {
	b.l.Pointers = append(b.l.Pointers, Pointer{File: f, Offset: off, Size: size, Target: target})
}

func (b *layout) checksum(f File, off, start, length uint32) {
	b.l.Checksums = append(b.l.Checksums, Checksum{File: f, Offset: off, Start: start, Length: length})
}

// lay builds the tables for cfg with each file f placed at base[f]: with
// every base 0 it is the relocatable form, and with others it is what a
// firmware makes of that form, but for the checksums, which it leaves 0.
// Each pointer field written from an address must be declared beside it.
func lay(cfg Config, base [numFiles]uint64) (*Loadable, error) {
	if cfg.CPUs < 1 || cfg.CPUs > MaxCPUs {
		return nil, fmt.Errorf("ACPI tables: %d vCPUs, want 1 to %d", cfg.CPUs, MaxCPUs)
	}
	if cfg.HWReduced && cfg.Legacy {
		return nil, errors.New("ACPI tables: a HW-reduced ACPI machine cannot have the PC legacy devices")
	}
	res, err := resources()
	if err != nil {
		return nil, err
	}
	b := &layout{base: base}

	// Each table follows the ones it points to: FACS, DSDT, MADT, then
	// FADT, then XSDT; the RSDP, in its own file, points to the XSDT.
	var facsAddr uint64
	if !cfg.HWReduced {
		facsAddr = b.addr(TablesFile, b.table(facs(), facsAlign)) // no checksum
	}
	dsdtOff := b.sdt(dsdt(slpTypS5, res.pci))
	madtOff := b.sdt(madt(madtParams{
		lapic:     uint32(res.lapic),
		pcat:      cfg.Legacy,
		cpus:      cfg.CPUs,
		ioapicID:  uint8(cfg.CPUs),
		ioapic:    uint32(res.ioapic),
		overrides: overrides(cfg, res),
	}))

	fadtOff := b.sdt(fadt(fadtFor(cfg, res, facsAddr, b.addr(TablesFile, dsdtOff))))
	if !cfg.HWReduced {
		b.pointer(TablesFile, fadtOff+fadtFirmwareCtrl, 4, TablesFile)
		b.pointer(TablesFile, fadtOff+fadtXFirmwareCtrl, 8, TablesFile)
	}
	b.pointer(TablesFile, fadtOff+fadtDSDT, 4, TablesFile)
	b.pointer(TablesFile, fadtOff+fadtXDSDT, 8, TablesFile)

	entries := []uint32{fadtOff, madtOff}
	addrs := make([]uint64, len(entries))
	for i, off := range entries {
		addrs[i] = b.addr(TablesFile, off)
	}
	xsdtOff := b.sdt(xsdt(addrs...))
	for i := range entries {
		b.pointer(TablesFile, xsdtOff+headerSize+8*uint32(i), 8, TablesFile)
	}

	b.l.RSDP = rsdp(b.addr(TablesFile, xsdtOff))
	b.pointer(RSDPFile, rsdpXsdtAddress, 8, TablesFile)
	b.checksum(RSDPFile, rsdpChecksum, 0, rsdpV1Size)
	b.checksum(RSDPFile, rsdpExtChecksum, 0, rsdpSize)
	return &b.l, nil
}

// link returns the blobs as a firmware leaves them that has allocated
// each file f at base[f] and run the loader commands: every pointer
// patched, then every checksum computed, as SeaBIOS computes them.
func (l *Loadable) link(base [numFiles]uint64) ([numFiles][]byte, error) {
	var out [numFiles][]byte
	for f := range numFiles {
		if base[f]%uint64(f.Align()) != 0 {
			return out, fmt.Errorf("ACPI tables: %s at %#x, want it %d-byte aligned", f, base[f], f.Align())
		}
		out[f] = bytes.Clone(l.Data(f))
	}
	for _, p := range l.Pointers {
		if p.File >= numFiles || p.Target >= numFiles {
			return out, fmt.Errorf("ACPI tables: pointer %+v names no file", p)
		}
		b := out[p.File]
		if uint64(p.Offset)+uint64(p.Size) > uint64(len(b)) {
			return out, fmt.Errorf("ACPI tables: pointer %+v lies outside the %d bytes of %s", p, len(b), p.File)
		}
		field := b[p.Offset : p.Offset+uint32(p.Size)]
		switch p.Size {
		case 4:
			v := uint64(le.Uint32(field)) + base[p.Target]
			if v > math.MaxUint32 {
				return out, fmt.Errorf("ACPI tables: pointer %+v to %#x does not fit in 32 bits", p, v)
			}
			le.PutUint32(field, uint32(v))
		case 8:
			v := le.Uint64(field)
			if v+base[p.Target] < v {
				return out, fmt.Errorf("ACPI tables: pointer %+v overflows 64 bits", p)
			}
			le.PutUint64(field, v+base[p.Target])
		default:
			return out, fmt.Errorf("ACPI tables: pointer %+v is not 4 or 8 bytes", p)
		}
	}
	for _, c := range l.Checksums {
		if c.File >= numFiles {
			return out, fmt.Errorf("ACPI tables: checksum %+v names no file", c)
		}
		b := out[c.File]
		end := uint64(c.Start) + uint64(c.Length)
		if end > uint64(len(b)) || c.Offset < c.Start || uint64(c.Offset) >= end {
			return out, fmt.Errorf("ACPI tables: checksum %+v is not within its range within the %d bytes of %s", c, len(b), c.File)
		}
		b[c.Offset] -= sum(b[c.Start:end])
	}
	return out, nil
}
