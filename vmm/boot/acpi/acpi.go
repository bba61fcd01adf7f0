// Package acpi builds the guest's ACPI tables: RSDP (revision 2), XSDT,
// FADT (revision 6), FACS, DSDT and MADT. Build places them in
// memory.ACPIStart..ACPIEnd for a directly booted kernel; Relocatable
// returns the same tables for a firmware to place through fw_cfg's
// "etc/table-loader" (see loader.go).
//
// Every port, address and interrupt line in the tables comes from the
// inventory: the PM1a event and control blocks and the SCI from ACPIEvt and
// ACPICnt, the IOAPIC and local APIC windows from IOAPICMem and LAPICMem,
// and the PCI root bridge's configuration ports and memory window, in the
// DSDT, from PCIConfigAddress, PCIConfigData and PCIWindow.
//
// Interrupt routing. The machine uses KVM's in-kernel irqchip with its
// default GSI routing (arch/x86/kvm/irq_comm.c, default_routing; irq.c in
// newer kernels): GSI i goes to IOAPIC pin i for i in 0..23, and also to
// 8259 pin i%8 for i < 16. The in-kernel PIT raises GSI 0. ISA IRQ n
// therefore reaches IOAPIC pin n unchanged, and the MADT needs no override
// for IRQ0 (a PC's IRQ0-to-pin-2 override would be wrong here). The only
// override is for the SCI, to declare it level-triggered, active high.
package acpi

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/acpipm"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// slpTypS5 is the SLP_TYP value for S5 (soft off): the DSDT's \_S5
// package tells the guest to write what the PM device acts on.
const slpTypS5 = acpipm.SlpTypS5

// MaxCPUs is the most vCPUs the tables describe: xAPIC IDs and ACPI
// processor UIDs are 8 bits, 0xff is the broadcast ID and the "all
// processors" UID, and the IOAPIC takes the ID after the last CPU.
const MaxCPUs = 254

// Config says what machine the tables describe.
type Config struct {
	// CPUs is the number of vCPUs, with APIC IDs 0..CPUs-1.
	CPUs int
	// Legacy says the machine has the PC legacy devices: the 8259 pair
	// (MADT PCAT_COMPAT), the i8042 and the CMOS RTC (FADT
	// IAPC_BOOT_ARCH LEGACY_DEVICES and 8042; without Legacy the FADT
	// says CMOS_RTC_NOT_PRESENT).
	Legacy bool
	// Handoff says the guest will be captured and resumed on a profile
	// without the legacy devices. The tables then describe the i8042 and
	// the CMOS RTC as absent (no 8042 flag, CMOS_RTC_NOT_PRESENT), though
	// they are on the bus for firmware and for OSes that probe them
	// directly, so that an ACPI OS binds no driver to devices that vanish
	// at the handoff: Linux takes its wall clock from kvmclock, and its RTC
	// driver would otherwise read the vanished RTC after resume, where
	// every read is 0xff, the update-in-progress bit stays set, and the
	// read spins through 10,000 retries; its i8042 driver would probe the
	// vanished controller at shutdown.
	Handoff bool
	// HWReduced sets the FADT's HW_REDUCED_ACPI flag: no PM1 blocks, no
	// SCI, no FACS. The inventory has no sleep control/status register
	// entry yet, so a HW-reduced guest cannot power itself off through
	// ACPI. It excludes Legacy.
	HWReduced bool
}

// ForProfile returns the configuration for cpus vCPUs and the devices
// profile p offers.
func ForProfile(p inventory.Profile, cpus int) Config {
	legacy := true
	for _, id := range []inventory.ID{inventory.PICMaster, inventory.I8042Data, inventory.CMOS} {
		legacy = legacy && inventory.MustGet(id).In(p)
	}
	return Config{CPUs: cpus, Legacy: legacy}
}

// tableAlign is the alignment of the RSDP, so that a guest that scans
// 0xE0000-0xFFFFF for it finds it, and of every table but the FACS.
const tableAlign = 16

// Build writes the ACPI tables for cfg into guest memory and returns the
// RSDP's guest-physical address, for boot_params.acpi_rsdp_addr.
//
// It places the blobs of Relocatable(cfg) as a firmware would: the RSDP
// at memory.ACPIStart and the tables blob after it, 64-byte aligned, with
// the pointers patched and the checksums computed.
func Build(mem *memory.Guest, cfg Config) (uint64, error) {
	l, err := Relocatable(cfg)
	if err != nil {
		return 0, err
	}
	var base [numFiles]uint64
	base[RSDPFile] = alignUp(memory.ACPIStart, uint64(RSDPFile.Align()))
	base[TablesFile] = alignUp(base[RSDPFile]+uint64(len(l.RSDP)), uint64(TablesFile.Align()))
	if next := base[TablesFile] + uint64(len(l.Tables)); next > memory.ACPIEnd {
		return 0, fmt.Errorf("ACPI tables need %d bytes, more than the %d between %#x and %#x",
			next-memory.ACPIStart, memory.ACPIEnd-memory.ACPIStart, memory.ACPIStart, memory.ACPIEnd)
	}
	files, err := l.link(base)
	if err != nil {
		return 0, err
	}

	// Clear the whole area first: nothing stale may look like a table.
	if err := mem.WriteAt(make([]byte, memory.ACPIEnd-memory.ACPIStart), memory.ACPIStart); err != nil {
		return 0, fmt.Errorf("ACPI tables: %w", err)
	}
	for f, b := range files {
		if err := mem.WriteAt(b, base[f]); err != nil {
			return 0, fmt.Errorf("ACPI tables: write %s at %#x: %w", File(f), base[f], err)
		}
	}
	return base[RSDPFile], nil
}

func alignUp(a, align uint64) uint64 { return (a + align - 1) &^ (align - 1) }

// res are the inventory resources the tables name.
type res struct {
	pm1Evt, pm1Cnt inventory.Entry
	sci            int
	ioapic, lapic  uint64
	pci            pciParams
}

func resources() (res, error) {
	var r res
	r.pm1Evt = inventory.MustGet(inventory.ACPIEvt)
	r.pm1Cnt = inventory.MustGet(inventory.ACPICnt)
	ioapic := inventory.MustGet(inventory.IOAPICMem)
	lapic := inventory.MustGet(inventory.LAPICMem)
	r.sci = r.pm1Evt.IRQ
	r.ioapic, r.lapic = ioapic.Base, lapic.Base

	for _, c := range []struct {
		e     inventory.Entry
		space inventory.Space
	}{{r.pm1Evt, inventory.SpacePIO}, {r.pm1Cnt, inventory.SpacePIO}, {ioapic, inventory.SpaceMMIO}, {lapic, inventory.SpaceMMIO}} {
		if c.e.Space != c.space || c.e.End() > 1<<32 {
			return r, fmt.Errorf("ACPI tables: inventory entry %s is not a 32-bit %s range", c.e, c.space)
		}
	}
	// PM1 event blocks hold a status and an enable register of equal
	// size, at least 2 bytes each; control blocks are at least 2 bytes.
	if n := r.pm1Evt.Size; n < 4 || n%2 != 0 || n > 0xff {
		return r, fmt.Errorf("ACPI tables: PM1 event block %s is %d bytes, want an even size of 4 or more", r.pm1Evt, n)
	}
	if n := r.pm1Cnt.Size; n < 2 || n > 0xff {
		return r, fmt.Errorf("ACPI tables: PM1 control block %s is %d bytes, want 2 or more", r.pm1Cnt, n)
	}
	if r.sci < 1 || r.sci > 15 || r.sci == 2 {
		return r, fmt.Errorf("ACPI tables: SCI on IRQ %d from inventory entry %s, want an ISA IRQ", r.sci, r.pm1Evt)
	}
	var err error
	r.pci, err = pciResources(inventory.MustGet(inventory.PCIConfigAddress), inventory.MustGet(inventory.PCIConfigData), inventory.MustGet(inventory.PCIWindow))
	return r, err
}

// pciResources checks the inventory entries the PCI root bridge's _CRS
// names: the configuration mechanism #1 registers, a dword address
// register directly followed by a dword data window, which one IO
// descriptor covers, and a memory window below 4 GiB, which one DWord
// Memory descriptor covers.
func pciResources(addr, data, window inventory.Entry) (pciParams, error) {
	const cfgReg = 4 // both registers are 32 bits wide
	for _, e := range []inventory.Entry{addr, data} {
		if e.Space != inventory.SpacePIO || e.Size != cfgReg || e.End() > 1<<16 {
			return pciParams{}, fmt.Errorf("ACPI tables: inventory entry %s is not a %d-port I/O range", e, cfgReg)
		}
	}
	if data.Base != addr.End() {
		return pciParams{}, fmt.Errorf("ACPI tables: PCI configuration data window %s does not follow the address register %s; one IO descriptor cannot cover both", data, addr)
	}
	if window.Space != inventory.SpaceMMIO || window.Size == 0 || window.End() > 1<<32 {
		return pciParams{}, fmt.Errorf("ACPI tables: PCI memory window %s is not a 32-bit MMIO range", window)
	}
	return pciParams{
		cfgPort: uint16(addr.Base),
		cfgLen:  uint8(addr.Size + data.Size),
		winBase: uint32(window.Base),
		winSize: uint32(window.Size),
	}, nil
}

func fadtFor(cfg Config, r res, facsAddr, dsdtAddr uint64) fadtParams {
	p := fadtParams{facs: facsAddr, dsdt: dsdtAddr, flags: FlagWBINVD | FlagProcC1 | FlagSlpButton}
	p.bootArch = BootArchVGANotPresent
	switch {
	case cfg.Legacy && !cfg.Handoff:
		p.bootArch |= BootArchLegacyDevices | BootArch8042
	case cfg.Legacy:
		p.bootArch |= BootArchLegacyDevices | BootArchCMOSRTCNotPre
	default:
		p.bootArch |= BootArchCMOSRTCNotPre
	}
	if cfg.HWReduced {
		p.flags |= FlagHWReducedACPI | FlagPwrButton
		return p
	}
	p.sci = uint16(r.sci)
	p.pm1aEvt, p.pm1EvtLen = uint32(r.pm1Evt.Base), uint8(r.pm1Evt.Size)
	p.pm1aCnt, p.pm1CntLen = uint32(r.pm1Cnt.Base), uint8(r.pm1Cnt.Size)
	return p
}

// overrides returns the MADT interrupt source overrides. KVM's default
// routing sends ISA IRQ n to IOAPIC pin n, so only the SCI's polarity and
// trigger mode need declaring: ACPI's SCI is level-triggered; active high
// is what the PM device drives.
func overrides(cfg Config, r res) []override {
	if cfg.HWReduced {
		return nil
	}
	return []override{{source: uint8(r.sci), gsi: uint32(r.sci), flags: intiPolarityHigh | intiTriggerLevel}}
}
