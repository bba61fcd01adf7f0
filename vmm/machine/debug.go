package machine

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Local APIC register offsets (in the KVM_GET_LAPIC page) for DebugState.
const (
	lapicISR = 0x100
	lapicIRR = 0x200
)

// DebugState pauses the machine and describes each vCPU for a person
// chasing a hung guest: its MP state, RIP, whether interrupts are enabled,
// and the vectors in service and requested at its local APIC. The machine
// stays paused.
func (m *Machine) DebugState() string {
	m.Pause()
	var b strings.Builder
	for i, v := range m.cpus {
		c := v.KVM()
		mp, err1 := c.MPState()
		regs, err2 := c.Regs()
		lapic, err3 := c.LAPIC()
		if err := firstErr(err1, err2, err3); err != nil {
			fmt.Fprintf(&b, "vCPU %d: %v\n", i, err)
			continue
		}
		fmt.Fprintf(&b, "vCPU %d: mp_state %d rip %#x IF %v ISR %v IRR %v\n", i, mp, regs.RIP, regs.RFLAGS&(1<<9) != 0,
			vectors(lapic[:], lapicISR), vectors(lapic[:], lapicIRR))
	}
	if m.ioapic != nil {
		s := m.ioapic.State()
		for pin, r := range s.Redir {
			if s.Level[pin] || r&(1<<14) != 0 {
				fmt.Fprintf(&b, "ioapic pin %d: redir %#x level %v\n", pin, r, s.Level[pin])
			}
		}
	}
	return b.String()
}

// vectors lists the bits set in a 256-bit APIC register array at off
// (eight 32-bit words, 16 bytes apart).
func vectors(lapic []byte, off int) []int {
	var vs []int
	for w := range 8 {
		word := binary.LittleEndian.Uint32(lapic[off+16*w:])
		for bit := range 32 {
			if word&(1<<bit) != 0 {
				vs = append(vs, 32*w+bit)
			}
		}
	}
	return vs
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
