package machine

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/bootset"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// newBootSet makes the boot-time devices; nil in a binary that has none.
var newBootSet bootset.New

// SetBootDevices gives machines their boot-time (legacy) devices. Binaries
// that boot guests on the full profile call it with legacy.New; a binary
// that only resumes guests on the minimal profile does not, and so does
// not contain them.
func SetBootDevices(f bootset.New) { newBootSet = f }

// legacyDevices adds the boot-time PC devices the profile offers (the
// i8042, the CMOS/RTC and the POST port, from the boot set) and the PM1
// event block of the required ACPI PM device. The PIC and PIT are KVM's
// (see createIRQChip).
func (m *Machine) legacyDevices(devs deviceSet) error {
	if m.offers(inventory.ACPIEvt) {
		devs[inventory.ACPIEvt] = m.pm.Event()
	}
	var wanted []inventory.ID
	for _, e := range m.entries() {
		if e.Class == inventory.Legacy && !e.InKernel && e.ID != inventory.ACPIEvt {
			wanted = append(wanted, e.ID)
		}
	}
	if len(wanted) == 0 {
		return nil
	}
	if newBootSet == nil {
		return fmt.Errorf("%w: profile %v offers boot-time devices (%v, ...), and this binary has none: it only resumes guests on the minimal profile", ErrInvalid, m.cfg.Profile, wanted[0])
	}
	regs := memory.Regions(m.cfg.Memory)
	ctx := bootset.Context{Offers: m.offers, IRQLine: m.irqLine, Reset: func() { m.guestExit(ExitReboot) },
		LowMem: regs[0].Size, CPUs: m.cfg.CPUs, Firmware: m.firmware, Memory: m.mem,
		Log: func(err error) { m.cfg.Log.Printf("firmware: %v", err) }}
	if len(regs) > 1 {
		ctx.HighMem = regs[1].Size
	}
	set, err := newBootSet(ctx)
	if err != nil {
		return err
	}
	m.boot = set
	m.close = append(m.close, set.Close)
	for id, d := range set.Devices() {
		devs[id] = d
	}
	return nil
}
