package acpi

import (
	"encoding/binary"
)

var le = binary.LittleEndian

// Identification written into every table header.
const (
	oemID           = "BUNKER"   // 6 bytes
	oemTableID      = "BUNKERVM" // 8 bytes
	oemRevision     = 1
	creatorID       = "BNKR" // 4 bytes
	creatorRevision = 1
)

// headerSize is the size of the common System Description Table header;
// headerChecksum is the offset of its Checksum byte.
const (
	headerSize     = 36
	headerChecksum = 9
)

// sdt returns a table: the common header with signature sig and revision
// rev, followed by body, with Length filled in. The Checksum byte is left
// 0: it depends on the addresses the table's pointers are patched with,
// so the layout declares it and whoever places the tables computes it.
func sdt(sig string, rev uint8, body []byte) []byte {
	t := make([]byte, headerSize+len(body))
	copy(t[0:4], sig)
	le.PutUint32(t[4:], uint32(len(t)))
	t[8] = rev
	copy(t[10:16], oemID)
	copy(t[16:24], oemTableID)
	le.PutUint32(t[24:], oemRevision)
	copy(t[28:32], creatorID)
	le.PutUint32(t[32:], creatorRevision)
	copy(t[headerSize:], body)
	return t
}

// sum returns the 8-bit sum of b; a table with a correct checksum sums to 0.
func sum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

// RSDP, revision 2 (ACPI 6.5, 5.2.5.3).
const (
	rsdpSize     = 36
	rsdpV1Size   = 20 // the ACPI 1.0 part, which Checksum covers
	rsdpRevision = 2

	rsdpChecksum    = 8  // over the first rsdpV1Size bytes
	rsdpRsdtAddress = 16 // 32 bits
	rsdpXsdtAddress = 24 // 64 bits
	rsdpExtChecksum = 32 // over all rsdpSize bytes
)

// rsdp returns the RSDP pointing at the XSDT at xsdt, with both checksums
// left 0, as sdt leaves a table's.
func rsdp(xsdt uint64) []byte {
	b := make([]byte, rsdpSize)
	copy(b[0:8], "RSD PTR ")
	copy(b[9:15], oemID)
	b[15] = rsdpRevision
	le.PutUint32(b[rsdpRsdtAddress:], 0) // no RSDT, the XSDT is used
	le.PutUint32(b[20:], rsdpSize)
	le.PutUint64(b[rsdpXsdtAddress:], xsdt)
	return b
}

func xsdt(tables ...uint64) []byte {
	body := make([]byte, 8*len(tables))
	for i, a := range tables {
		le.PutUint64(body[8*i:], a)
	}
	return sdt("XSDT", 1, body)
}

// FACS (ACPI 6.5, 5.2.10): 64 bytes, 64-byte aligned, no checksum.
const (
	facsSize    = 64
	facsAlign   = 64
	facsVersion = 2
)

func facs() []byte {
	b := make([]byte, facsSize)
	copy(b[0:4], "FACS")
	le.PutUint32(b[4:], facsSize)
	b[32] = facsVersion
	return b
}

// gas is a Generic Address Structure (ACPI 6.5, 5.2.3.2).
type gas struct {
	Space      uint8
	BitWidth   uint8
	BitOffset  uint8
	AccessSize uint8
	Address    uint64
}

const (
	gasSize       = 12
	gasSystemIO   = 1
	gasAccessWord = 2
)

func (g gas) put(b []byte) {
	b[0], b[1], b[2], b[3] = g.Space, g.BitWidth, g.BitOffset, g.AccessSize
	le.PutUint64(b[4:], g.Address)
}

// FADT, revision 6 layout (ACPI 6.0 onward, 276 bytes). Offsets are from
// the start of the table (ACPI 6.5, Table 5.9; Linux include/acpi/actbl.h,
// struct acpi_table_fadt).
const (
	fadtSize     = 276
	fadtRevision = 6
	fadtMinor    = 0

	fadtFirmwareCtrl  = 36
	fadtDSDT          = 40
	fadtPreferredPM   = 45
	fadtSCIInt        = 46
	fadtSMICmd        = 48
	fadtAcpiEnable    = 52
	fadtAcpiDisable   = 53
	fadtPM1aEvtBlk    = 56
	fadtPM1bEvtBlk    = 60
	fadtPM1aCntBlk    = 64
	fadtPM1bCntBlk    = 68
	fadtPM2CntBlk     = 72
	fadtPMTmrBlk      = 76
	fadtGPE0Blk       = 80
	fadtGPE1Blk       = 84
	fadtPM1EvtLen     = 88
	fadtPM1CntLen     = 89
	fadtPM2CntLen     = 90
	fadtPMTmrLen      = 91
	fadtGPE0BlkLen    = 92
	fadtGPE1BlkLen    = 93
	fadtCentury       = 108
	fadtIAPCBootArch  = 109
	fadtFlags         = 112
	fadtResetReg      = 116
	fadtResetValue    = 128
	fadtARMBootArch   = 129
	fadtMinorVersion  = 131
	fadtXFirmwareCtrl = 132
	fadtXDSDT         = 140
	fadtXPM1aEvtBlk   = 148
	fadtXPM1bEvtBlk   = 160
	fadtXPM1aCntBlk   = 172
	fadtXPM1bCntBlk   = 184
	fadtXPM2CntBlk    = 196
	fadtXPMTmrBlk     = 208
	fadtXGPE0Blk      = 220
	fadtXGPE1Blk      = 232
	fadtSleepCtrlReg  = 244
	fadtSleepStsReg   = 256
	fadtHypervisorID  = 268
)

// IAPC_BOOT_ARCH flags (ACPI 6.5, Table 5.11).
const (
	BootArchLegacyDevices = 1 << 0 // LPC/ISA devices the OS must discover by probing
	BootArch8042          = 1 << 1 // an 8042 keyboard controller at ports 0x60/0x64
	BootArchVGANotPresent = 1 << 2 // do not probe for VGA
	BootArchMSINotSupp    = 1 << 3
	BootArchPCIeASPM      = 1 << 4
	BootArchCMOSRTCNotPre = 1 << 5 // no CMOS RTC at ports 0x70/0x71
)

// FADT Flags (ACPI 6.5, Table 5.10).
const (
	FlagWBINVD        = 1 << 0  // WBINVD flushes and invalidates caches
	FlagProcC1        = 1 << 2  // all processors support C1
	FlagPwrButton     = 1 << 4  // no fixed-hardware power button
	FlagSlpButton     = 1 << 5  // no fixed-hardware sleep button
	FlagResetRegSup   = 1 << 10 // RESET_REG is valid
	FlagHWReducedACPI = 1 << 20 // no ACPI fixed hardware: PM1, PM timer, GPE, SCI
)

// fadtParams are the values the FADT is built from.
type fadtParams struct {
	facs, dsdt uint64
	sci        uint16
	pm1aEvt    uint32
	pm1EvtLen  uint8
	pm1aCnt    uint32
	pm1CntLen  uint8
	bootArch   uint16
	flags      uint32
}

func fadt(p fadtParams) []byte {
	b := make([]byte, fadtSize-headerSize)
	at := func(off int) []byte { return b[off-headerSize:] }
	le.PutUint32(at(fadtFirmwareCtrl), uint32(p.facs))
	le.PutUint32(at(fadtDSDT), uint32(p.dsdt))
	le.PutUint16(at(fadtSCIInt), p.sci)
	// SMI_CMD 0: ACPI is always enabled, there is no SMM to hand over
	// from. ACPI_ENABLE/ACPI_DISABLE stay 0.
	le.PutUint32(at(fadtSMICmd), 0)
	le.PutUint32(at(fadtPM1aEvtBlk), p.pm1aEvt)
	le.PutUint32(at(fadtPM1aCntBlk), p.pm1aCnt)
	// PM_TMR_BLK 0: no ACPI PM timer; the guest uses kvmclock/TSC.
	at(fadtPM1EvtLen)[0] = p.pm1EvtLen
	at(fadtPM1CntLen)[0] = p.pm1CntLen
	le.PutUint16(at(fadtIAPCBootArch), p.bootArch)
	le.PutUint32(at(fadtFlags), p.flags)
	at(fadtMinorVersion)[0] = fadtMinor
	le.PutUint64(at(fadtXFirmwareCtrl), p.facs)
	le.PutUint64(at(fadtXDSDT), p.dsdt)
	if p.pm1aEvt != 0 {
		gas{Space: gasSystemIO, BitWidth: 8 * p.pm1EvtLen, AccessSize: gasAccessWord, Address: uint64(p.pm1aEvt)}.put(at(fadtXPM1aEvtBlk))
	}
	if p.pm1aCnt != 0 {
		gas{Space: gasSystemIO, BitWidth: 8 * p.pm1CntLen, AccessSize: gasAccessWord, Address: uint64(p.pm1aCnt)}.put(at(fadtXPM1aCntBlk))
	}
	return sdt("FACP", fadtRevision, b)
}

// MADT (ACPI 6.5, 5.2.12).
const (
	madtRevision   = 5
	madtPCATCompat = 1 << 0 // dual 8259s present: mask them when using the APICs

	madtLocalAPIC      = 0 // Processor Local APIC, 8 bytes
	madtIOAPIC         = 1 // I/O APIC, 12 bytes
	madtIntSrcOverride = 2 // Interrupt Source Override, 10 bytes
	madtLocalAPICNMI   = 4 // Local APIC NMI, 6 bytes

	localAPICEnabled = 1 << 0

	// MPS INTI flags of an Interrupt Source Override (Table 5.50).
	intiPolarityHigh = 1 << 0 // bits 1:0 = 01
	intiPolarityLow  = 3 << 0 // bits 1:0 = 11
	intiTriggerEdge  = 1 << 2 // bits 3:2 = 01
	intiTriggerLevel = 3 << 2 // bits 3:2 = 11

	allProcessors = 0xff // ACPI Processor UID meaning every processor
)

type override struct {
	source uint8  // ISA IRQ
	gsi    uint32 // global system interrupt it arrives at
	flags  uint16 // MPS INTI flags
}

type madtParams struct {
	lapic     uint32
	pcat      bool
	cpus      int
	ioapicID  uint8
	ioapic    uint32
	overrides []override
}

func madt(p madtParams) []byte {
	b := make([]byte, 8)
	le.PutUint32(b[0:], p.lapic)
	if p.pcat {
		le.PutUint32(b[4:], madtPCATCompat)
	}
	for i := range p.cpus {
		e := make([]byte, 8)
		e[0], e[1] = madtLocalAPIC, 8
		e[2] = uint8(i) // ACPI Processor UID
		e[3] = uint8(i) // APIC ID
		le.PutUint32(e[4:], localAPICEnabled)
		b = append(b, e...)
	}
	e := make([]byte, 12)
	e[0], e[1] = madtIOAPIC, 12
	e[2] = p.ioapicID
	le.PutUint32(e[4:], p.ioapic)
	le.PutUint32(e[8:], 0) // GSI base
	b = append(b, e...)
	for _, o := range p.overrides {
		e := make([]byte, 10)
		e[0], e[1] = madtIntSrcOverride, 10
		e[2] = 0 // bus: ISA
		e[3] = o.source
		le.PutUint32(e[4:], o.gsi)
		le.PutUint16(e[8:], o.flags)
		b = append(b, e...)
	}
	// NMI arrives on LINT1 of every local APIC, as on a PC.
	e = make([]byte, 6)
	e[0], e[1] = madtLocalAPICNMI, 6
	e[2] = allProcessors
	le.PutUint16(e[3:], 0) // flags: conforms to the bus
	e[5] = 1               // LINT1
	b = append(b, e...)
	return sdt("APIC", madtRevision, b)
}

// dsdtRevision 2 makes AML integers 64 bits wide.
const dsdtRevision = 2

// pciParams are the resources of the PCI root bridge.
type pciParams struct {
	cfgPort uint16 // the configuration address register; the data window follows
	cfgLen  uint8  // ports of the address register and the data window together
	winBase uint32 // the memory window the BARs are placed in
	winSize uint32
}

func dsdt(slpTypS5 uint64, pci pciParams) []byte {
	// Name (_S5, Package () { SLP_TYPa, SLP_TYPb, Reserved, Reserved })
	aml := nameOp("_S5_", packageOp(amlInteger(slpTypS5), amlInteger(slpTypS5), amlInteger(0), amlInteger(0)))
	aml = append(aml, scopeOp(`\_SB_`, pciRootBridge(pci))...)
	return sdt("DSDT", dsdtRevision, aml)
}

// pciRootBridge returns \_SB.PCI0, the host bridge to PCI segment 0, bus
// 0, which an OS enumerates through configuration mechanism #1:
//
//	Device (PCI0) {
//		Name (_HID, EisaId ("PNP0A03"))	// PCI (not PCI Express) root bridge
//		Name (_UID, 0)
//		Name (_SEG, 0)
//		Name (_BBN, 0)
//		Name (_CRS, ResourceTemplate () {
//			WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0, 0, 1)
//			IO (Decode16, cfgPort, cfgPort, 1, cfgLen)
//			DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
//				0, winBase, winBase+winSize-1, 0, winSize)
//		})
//	}
//
// The IO descriptor is the configuration registers the bridge itself
// consumes. Linux (arch/x86/pci/acpi.c) takes every I/O and memory range
// of a host bridge's _CRS as a window for the devices below it, whatever
// its producer/consumer flag, except exactly the eight ports 0xcf8-0xcff,
// which it drops: so this descriptor must cover the address register and
// the data window together, 8 ports, as resources() checks.
//
// There is no _PRT: the devices have no INTx pin (Interrupt Pin 0) and
// interrupt through MSI-X only, so there is no legacy interrupt to route.
// There is no _OSC either: it negotiates PCI Express native control
// (hot-plug, AER, PME), which a PCI root bridge (PNP0A03, not PNP0A08)
// does not offer.
//
// There are no I/O port windows (WordIO producers, as a PC's 0x0000-0x0cf7
// and 0x0d00-0xffff): the host decodes memory BARs only, never I/O BARs,
// so a window would advertise ports that reach no PCI function, and an OS
// could place an I/O BAR in it that nothing answers. The legacy devices'
// ports (serial, i8042, RTC, PM) are not behind the bridge in the
// namespace: the OS probes them or finds them in the FADT, and claims them
// from the whole I/O space, not from a bridge window, so they need none.
func pciRootBridge(p pciParams) []byte {
	return deviceOp("PCI0",
		nameOp("_HID", amlDWord(eisaID("PNP0A03"))),
		nameOp("_UID", amlInteger(0)),
		nameOp("_SEG", amlInteger(0)),
		nameOp("_BBN", amlInteger(0)),
		nameOp("_CRS", resourceTemplate(
			addrSpace{typ: rtBusNumber, flags: addrMinFixed | addrMaxFixed, min: 0, max: 0, length: 1}.word(),
			ioPort(true, p.cfgPort, p.cfgPort, 1, p.cfgLen),
			addrSpace{
				typ: rtMemory, flags: addrMinFixed | addrMaxFixed, typeFlags: memNonCacheable | memReadWrite,
				min: uint64(p.winBase), max: uint64(p.winBase) + uint64(p.winSize) - 1, length: uint64(p.winSize),
			}.dword(),
		)),
	)
}
