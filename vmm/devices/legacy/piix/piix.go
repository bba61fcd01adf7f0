// Package piix makes the PCI-to-ISA bridge function of an Intel PIIX3
// (82371SB, 8086:7000), which PC firmware looks for next to an i440FX
// host bridge to program the routing of the PCI interrupt lines (PIRQA-D)
// onto ISA IRQs.
//
// Only the configuration space exists: the bridge's ISA devices are the
// other legacy devices of the inventory (KVM's PIC and PIT, the CMOS, the
// i8042), and its ELCR is KVM's PIC's. Routing registers are stored and
// read back, masked to their defined bits; nothing consults them, because
// no device of the machine raises INTx (the virtio devices interrupt with
// MSI-X only). The function is offered only with firmware and is dropped
// at the handoff.
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
