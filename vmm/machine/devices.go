package machine

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/acpipm"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/serial"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
)

// deviceSet maps the inventory entries a profile offers to the userspace
// devices that serve them.
type deviceSet map[inventory.ID]bus.Device

// attachDevices creates the profile's userspace devices and registers
// them on the buses. Registration walks the inventory: every entry the
// profile offers must have a device, and no device may serve anything else.
func (m *Machine) attachDevices() error {
	devs := deviceSet{}
	m.interruptControllers(devs)
	m.requiredDevices(devs)
	if err := m.consoleDevices(devs); err != nil {
		return err
	}
	if err := m.legacyDevices(devs); err != nil {
		return err
	}
	if err := m.pciDevices(devs, !m.restored); err != nil {
		return err
	}
	for _, e := range m.entries() {
		if e.InKernel || e.Space == inventory.SpacePCI {
			continue // KVM's, or behind the PCI host
		}
		d, ok := devs[e.ID]
		if !ok {
			return fmt.Errorf("inventory entry %v is in profile %v but no device serves it", e, m.cfg.Profile)
		}
		b := m.pio
		if e.Space == inventory.SpaceMMIO {
			b = m.mmio
		}
		if err := b.Register(e, d); err != nil {
			return err
		}
		delete(devs, e.ID)
	}
	for id := range devs {
		return fmt.Errorf("device for %q created but the inventory does not offer it in profile %v", id, m.cfg.Profile)
	}
	return nil
}

// interruptControllers adds the userspace IOAPIC of a split irqchip.
func (m *Machine) interruptControllers(devs deviceSet) {
	if m.ioapic != nil {
		devs[inventory.IOAPICUser] = m.ioapic
	}
}

// entries returns the inventory entries the machine offers: its profile's,
// plus the serial console where it was asked for as an addition.
func (m *Machine) entries() []inventory.Entry {
	es := inventory.For(m.cfg.Profile)
	if com1 := inventory.MustGet(inventory.COM1); m.cfg.SerialConsole && !com1.In(m.cfg.Profile) {
		es = append(es, com1)
	}
	return es
}

// offersEntry reports whether the machine offers entry id.
func (m *Machine) offersEntry(id inventory.ID) bool {
	for _, e := range m.entries() {
		if e.ID == id {
			return true
		}
	}
	return false
}

// irqLine returns the interrupt line of inventory entry id. ISA interrupt
// n is GSI n and IOAPIC pin n (the MADT has no override but the SCI's,
// which keeps its number).
func (m *Machine) irqLine(id inventory.ID) irq.Line {
	e := inventory.MustGet(id)
	if e.IRQ < 0 {
		panic(fmt.Sprintf("machine: inventory entry %s has no interrupt line", id))
	}
	if m.ioapic != nil {
		return m.ioapic.Line(e.IRQ)
	}
	return irq.LineFunc(func(high bool) {
		if err := m.raise(uint32(e.IRQ), high); err != nil {
			m.cfg.Log.Printf("%s: %v", id, err)
		}
	})
}

// requiredDevices adds the devices every profile has.
func (m *Machine) requiredDevices(devs deviceSet) {
	pm := acpipm.New(m.irqLine(inventory.ACPIEvt), acpipm.Config{
		PowerOff: func() { m.guestExit(ExitPoweroff) },
		Sleep:    func(t uint8) { m.cfg.Log.Printf("acpi: guest asked for sleep type %d, ignored", t) },
	})
	m.pm = pm
	devs[inventory.ACPICnt] = pm.Control()
}

// consoleDevices adds the serial console where the profile offers it.
func (m *Machine) consoleDevices(devs deviceSet) error {
	if !m.offersEntry(inventory.COM1) {
		return nil
	}
	out := m.consoleOut(inputSerial)
	in := m.cfg.ConsoleIn
	if m.input != inputSerial {
		in = nil
	}
	u := serial.New(m.irqLine(inventory.COM1), in, out)
	m.close = append(m.close, u.Close)
	m.uart = u
	devs[inventory.COM1] = u
	return nil
}
