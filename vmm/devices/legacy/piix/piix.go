// Package piix makes the chipset functions PC firmware looks for next to
// an i440FX host bridge: the PCI-to-ISA bridge of an Intel PIIX3
// (82371SB, 8086:7000), which routes the PCI interrupt lines (PIRQA-D)
// onto ISA IRQs, and the power-management function of a PIIX4 (82371AB,
// 8086:7113), which says where the ACPI PM registers are.
//
// Only configuration space exists: the bridge's ISA devices are the other
// legacy devices of the inventory (KVM's PIC and PIT, the CMOS, the
// i8042), its ELCR is KVM's PIC's, and the PM registers are the ACPI PM
// device's. Routing registers are stored and read back, masked to their
// defined bits; nothing consults them, because no device of the machine
// raises INTx (the virtio devices interrupt with MSI-X only). The
// functions are offered only with firmware and are dropped at the
// handoff.
package piix

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
)

// Identity of the function.
const (
	vendorIntel = 0x8086
	devicePIIX3 = 0x7000
	classISA    = 0x060100 // bridge, PCI-to-ISA
)

// Device registers (PIIX3 datasheet, section 2.2), with their reset
// values and writable bits.
var registers = []pci.Register{
	{Off: 0x4c, Value: []byte{0x4d}, Writable: []byte{0xff}},             // IORT: ISA I/O recovery timer
	{Off: 0x4e, Value: []byte{0x03, 0x00}, Writable: []byte{0xff, 0x03}}, // XBCS: X-bus chip select
	// PIRQRC[A-D]: bit 7 disables the route, bits 3-0 name the ISA IRQ.
	{Off: 0x60, Value: []byte{0x80, 0x80, 0x80, 0x80}, Writable: []byte{0x8f, 0x8f, 0x8f, 0x8f}},
	{Off: 0x69, Value: []byte{0x02}, Writable: []byte{0xfe}},             // TOM: top of memory
	{Off: 0x6a, Value: []byte{0x00, 0x00}, Writable: []byte{0xff, 0x00}}, // MSTAT: miscellaneous status
	{Off: 0x70, Value: []byte{0x80, 0x80}, Writable: []byte{0xef, 0xef}}, // MBIRQ0-1: motherboard device IRQs
	{Off: 0x76, Value: []byte{0x0c, 0x0c}, Writable: []byte{0x8f, 0x8f}}, // MBDMA0-1
	{Off: 0x80, Value: []byte{0x00}, Writable: []byte{0x7f}},             // APICBASE
	{Off: 0x82, Value: []byte{0x00}, Writable: []byte{0x0f}},             // DLC: deterministic latency control
}

// NewISABridge returns the bridge function, as after reset.
func NewISABridge() (*pci.Endpoint, error) {
	e, err := pci.NewEndpoint(pci.Header{Vendor: vendorIntel, Device: devicePIIX3, Class: classISA}, [6]pci.BAR{}, nil)
	if err != nil {
		return nil, fmt.Errorf("PIIX3 ISA bridge: %w", err)
	}
	if err := e.AddRegisters(registers...); err != nil {
		return nil, fmt.Errorf("PIIX3 ISA bridge: %w", err)
	}
	return e, nil
}

// The PIIX4's power-management function (82371AB function 3).
const (
	devicePIIX4PM = 0x7113
	classBridge   = 0x068000 // bridge, other
	revisionPIIX4 = 0x03

	pmBase     = 0x40 // PMBA: the PM I/O block, bit 0 = I/O space
	devActB    = 0x58 // DEVACTB, dword; bit 25 = APMC_EN
	pmRegMisc  = 0x80 // PMIOSE: the PM I/O block is enabled
	smbBase    = 0x90 // SMBBA
	smbHostCfg = 0xd2 // SMBus host enable
)

// NewPMFunction returns the PIIX4 power-management function with its PM
// I/O base fixed at pm1Base (the PM1 event block of the inventory) and
// always enabled: firmware's writes to PMBA and PMREGMISC are dropped, so
// an OS that reads them finds the block where the FADT says it is. The
// ACPI SCI is ISA IRQ 9, wired apart from PCI: the function raises no
// INTx. What the machine does not have reads as off: no SMBus (SMBBA 0,
// host disabled), and SMM is reported as already set up (DEVACTB's
// APMC_EN, as QEMU does when it has no SMM), so that SeaBIOS does not
// raise an SMI and wait for an answer that never comes.
func NewPMFunction(pm1Base uint16) (*pci.Endpoint, error) {
	if pm1Base&0x3f != 0 {
		return nil, fmt.Errorf("PIIX4 PM: PM base %#x is not 64-byte aligned", pm1Base)
	}
	e, err := pci.NewEndpoint(pci.Header{Vendor: vendorIntel, Device: devicePIIX4PM, Revision: revisionPIIX4, Class: classBridge}, [6]pci.BAR{}, nil)
	if err != nil {
		return nil, fmt.Errorf("PIIX4 PM: %w", err)
	}
	err = e.AddRegisters(
		pci.Register{Off: pmBase, Value: []byte{byte(pm1Base) | 1, byte(pm1Base >> 8), 0, 0}},
		pci.Register{Off: devActB, Value: []byte{0, 0, 0, 1 << (25 - 24)}},
		pci.Register{Off: pmRegMisc, Value: []byte{1}},
		pci.Register{Off: smbBase, Value: []byte{1, 0, 0, 0}},
		pci.Register{Off: smbHostCfg, Value: []byte{0}},
	)
	if err != nil {
		return nil, fmt.Errorf("PIIX4 PM: %w", err)
	}
	return e, nil
}
