package machine

import (
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/cmos"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/i8042"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/post"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// legacyDevices adds the boot-time PC devices the profile offers: the
// i8042 (for its reset line), the CMOS/RTC and the POST port. The PIC and
// PIT are KVM's (see createIRQChip).
func (m *Machine) legacyDevices(devs deviceSet) error {
	if m.offers(inventory.I8042Data) {
		kbc := i8042.New(m.irqLine(inventory.I8042Data), func() { m.guestExit(ExitReboot) })
		m.kbc = kbc
		devs[inventory.I8042Data] = kbc.Data()
		devs[inventory.I8042Cmd] = kbc.Command()
	}
	if m.offers(inventory.CMOS) {
		regs := memory.Regions(m.cfg.Memory)
		cfg := cmos.Config{LowMem: regs[0].Size, CPUs: m.cfg.CPUs}
		if len(regs) > 1 {
			cfg.HighMem = regs[1].Size
		}
		rtc := cmos.New(m.irqLine(inventory.CMOS), cfg)
		m.close = append(m.close, rtc.Close)
		devs[inventory.CMOS] = rtc
	}
	if m.offers(inventory.ACPIEvt) {
		// The PM1 event block of the (required) ACPI PM device.
		devs[inventory.ACPIEvt] = m.pm.Event()
	}
	if m.offers(inventory.POST) {
		devs[inventory.POST] = post.New()
	}
	return nil
}
