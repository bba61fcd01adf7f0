// Package bootset is the seam between a machine and its boot-time
// (legacy) devices. vmm/machine builds machines against it; the devices
// themselves, in vmm/devices/legacy, are linked only into binaries that
// boot guests (cmd/bunkerbuild), which hand their constructor to
// machine.SetBootDevices. A binary that only resumes guests on the minimal
// profile (cmd/bunkerhost) never imports them.
package bootset

import (
	"github.com/bunkerbuild/bunkerbuild/vmm/boot/acpi"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Context is what the boot-time devices need from the machine.
type Context struct {
	Offers  func(inventory.ID) bool     // whether the profile offers an entry
	IRQLine func(inventory.ID) irq.Line // the interrupt line of an entry's device
	Reset   func()                      // the guest asked for a reset (i8042 pulse)
	// RAM below and above the 32-bit PCI hole, and the vCPU count, for the
	// CMOS registers firmware reads.
	LowMem, HighMem uint64
	CPUs            int
	// Firmware, for a machine that boots through a BIOS, is what the BIOS
	// is told; nil for a machine that loads a kernel itself.
	Firmware *Firmware
	// Memory is guest RAM, which firmware reads and writes by DMA.
	Memory Memory
	// Log receives what the guest did wrong to a device.
	Log func(error)
}

// Memory is guest RAM as DMA-capable devices see it.
type Memory interface {
	ReadAt(b []byte, gpa uint64) error
	WriteAt(b []byte, gpa uint64) error
}

// Firmware describes the machine to a BIOS (through fw_cfg).
type Firmware struct {
	// ROM is the BIOS image the machine maps below 4 GiB.
	ROM []byte
	// E820 is the RAM the BIOS may use and report.
	E820 []memory.E820Entry
	// ACPI is the machine's ACPI tables, for the BIOS's table loader.
	ACPI *acpi.Loadable
	// BootOrder lists the boot devices, first first, as OpenFirmware
	// device paths (the fw_cfg bootorder file).
	BootOrder []string
}

// Set is a machine's boot-time devices.
type Set interface {
	// Devices returns the device serving each legacy entry the profile
	// offers.
	Devices() map[inventory.ID]bus.Device
	// Functions returns the PCI function of each legacy entry in the PCI
	// space the profile offers.
	Functions() map[inventory.ID]*pci.Endpoint
	// Quiescent reports whether the devices hold nothing the guest still
	// needs, so that their state can be dropped at the handoff; if not,
	// which device and why.
	Quiescent() (ok bool, device, why string)
	// Close stops their timers.
	Close() error
}

// New makes the boot-time devices for a machine.
type New func(Context) (Set, error)
