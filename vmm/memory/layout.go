// Package memory owns guest RAM and the guest-physical memory layout.
//
// This file is the one place the layout is written down. Guest-physical
// address space of an x86-64 guest:
//
// A machine that loads a kernel itself lays out its boot structures as
// follows; one that boots through firmware (a BIOS image) leaves the first
// MiB to the BIOS, except that it copies the image's last 128 KiB to
// ShadowStart..ACPIEnd, and maps the whole image read-only to end at
// 4 GiB, inside the PCI hole (the inventory's bios-rom entry).
//
//	0x0000_0000  real-mode IVT and BIOS data area (RAM, unused by us)
//	0x0000_0500  boot GDT                       (BootGDT)
//	0x0000_0520  boot IDT, empty                (BootIDT)
//	0x0000_7000  boot_params, the "zero page"   (ZeroPage)
//	0x0000_8ff0  initial stack, grows down      (BootStack)
//	0x0000_9000  PML4                           (PML4)
//	0x0000_a000  PDPT                           (PDPT)
//	0x0000_b000  4 page directories, 2 MiB pages identity-mapping 4 GiB (PageDirs)
//	0x0002_0000  kernel command line            (Cmdline, CmdlineMax bytes)
//	0x0009_fc00  EBDA, reserved                 (EBDAStart)
//	0x000a_0000  legacy VGA/ROM hole, not RAM   (to HighMemStart)
//	0x000e_0000  ACPI tables, reserved RAM      (ACPIStart .. ACPIEnd)
//	0x0010_0000  protected-mode kernel (bzImage payload) (KernelStart)
//	      ...    RAM up to min(size, PCIHoleStart); the initrd sits at its top
//	0xc000_0000  32-bit PCI hole, never RAM     (PCIHoleStart .. PCIHoleEnd);
//	             the IOAPIC and LAPIC windows live here (see vmm/inventory)
//	0xfffb_c000  KVM's identity-map page, then its 3-page TSS (Intel only)
//	0xfffc_0000  firmware boot: the BIOS image, at most 256 KiB, read-only
//	0x1_0000_0000 RAM above the hole, if the guest has more than 3 GiB
package memory

const (
	BootGDT   = 0x500
	BootIDT   = 0x520
	ZeroPage  = 0x7000
	BootStack = 0x8ff0
	PML4      = 0x9000
	PDPT      = 0xa000
	PageDirs  = 0xb000 // four pages
	Cmdline   = 0x20000

	// CmdlineMax bounds the command line we place, terminating NUL included.
	CmdlineMax = 0x10000

	EBDAStart    = 0x9fc00
	LegacyHole   = 0xa0000
	ACPIStart    = 0xe0000
	ACPIEnd      = 0x100000
	HighMemStart = 0x100000
	KernelStart  = HighMemStart

	PCIHoleStart = 0xc0000000
	PCIHoleEnd   = 0x100000000

	// KVMIdentityMap and KVMTSS are pages inside the PCI hole that KVM
	// needs on Intel hosts for real-mode emulation; the guest never sees RAM
	// there.
	KVMIdentityMap = 0xfffbc000
	KVMTSS         = 0xfffbd000

	// ShadowStart is where a firmware boot copies the end of the BIOS
	// image into RAM, as a PC's chipset aliases it below 1 MiB.
	ShadowStart = 0xe0000

	// MinSize and MaxSize bound guest RAM.
	MinSize = 64 << 20
	MaxSize = 64 << 30

	PageSize = 4096
)

// Region is a range of guest-physical RAM.
type Region struct {
	GPA  uint64
	Size uint64
}

// End returns the first address past the region.
func (r Region) End() uint64 { return r.GPA + r.Size }

// Regions splits size bytes of RAM around the PCI hole: one region below it
// and, when size exceeds the space below the hole, one above 4 GiB.
func Regions(size uint64) []Region {
	if size <= PCIHoleStart {
		return []Region{{GPA: 0, Size: size}}
	}
	return []Region{{GPA: 0, Size: PCIHoleStart}, {GPA: PCIHoleEnd, Size: size - PCIHoleStart}}
}

// E820Type is the type of an e820 map entry.
type E820Type uint32

const (
	E820RAM      E820Type = 1
	E820Reserved E820Type = 2
	E820ACPI     E820Type = 3
)

// E820Entry is one entry of the BIOS memory map given to the guest.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type E820Type
}

// E820 returns the memory map for a guest with size bytes of RAM.
func E820(size uint64) []E820Entry {
	regs := Regions(size)
	m := []E820Entry{
		{Addr: 0, Size: EBDAStart, Type: E820RAM},
		{Addr: EBDAStart, Size: LegacyHole - EBDAStart, Type: E820Reserved},
		{Addr: ACPIStart, Size: ACPIEnd - ACPIStart, Type: E820ACPI},
		{Addr: HighMemStart, Size: regs[0].End() - HighMemStart, Type: E820RAM},
	}
	if len(regs) > 1 {
		m = append(m, E820Entry{Addr: regs[1].GPA, Size: regs[1].Size, Type: E820RAM})
	}
	return m
}

// FirmwareE820 returns the RAM of a guest with size bytes, for a BIOS,
// which adds its own reservations (the EBDA, its ROM area, its tables)
// to the map it gives the OS.
func FirmwareE820(size uint64) []E820Entry {
	var m []E820Entry
	for _, r := range Regions(size) {
		m = append(m, E820Entry{Addr: r.GPA, Size: r.Size, Type: E820RAM})
	}
	return m
}
