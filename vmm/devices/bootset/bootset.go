// Package bootset is the seam between a machine and its boot-time
// (legacy) devices. vmm/machine builds machines against it; the devices
// themselves, in vmm/devices/legacy, are linked only into binaries that
// boot guests (cmd/bunkerbuild), which hand their constructor to
// machine.SetBootDevices. A binary that only resumes guests on the minimal
// profile (cmd/bunkerhost) never imports them.
package bootset

import (
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
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
}

// Set is a machine's boot-time devices.
type Set interface {
	// Devices returns the device serving each legacy entry the profile
	// offers.
	Devices() map[inventory.ID]bus.Device
	// Quiescent reports whether the devices hold nothing the guest still
	// needs, so that their state can be dropped at the handoff; if not,
	// which device and why.
	Quiescent() (ok bool, device, why string)
	// Close stops their timers.
	Close() error
}

// New makes the boot-time devices for a machine.
type New func(Context) (Set, error)
