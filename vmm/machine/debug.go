package machine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Local APIC register offsets (in the KVM_GET_LAPIC page) for DebugState.
const (
	lapicISR = 0x100
	lapicIRR = 0x200
)

// DebugState describes each vCPU for a person chasing a hung guest: its
// MP state, RIP twice (300 ms of running apart, to tell a loop from a
// vCPU that does not run), whether interrupts are enabled, the vectors in
// service and requested at its local APIC, and KVM's pending interrupt
// and NMI state (kvm_vcpu_events). It leaves the machine paused.
func (m *Machine) DebugState() string {
	m.Pause()
	first := make([]uint64, len(m.cpus))
	for i, v := range m.cpus {
		if regs, err := v.KVM().Regs(); err == nil {
			first[i] = regs.RIP
		}
	}
	m.Resume()
	time.Sleep(300 * time.Millisecond)
	m.Pause()
	var b strings.Builder
	for i, v := range m.cpus {
		c := v.KVM()
		mp, err1 := c.MPState()
		regs, err2 := c.Regs()
		lapic, err3 := c.LAPIC()
		ev, err4 := c.VCPUEvents()
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			fmt.Fprintf(&b, "vCPU %d: %v\n", i, err)
			continue
		}
		// struct kvm_vcpu_events: interrupt {injected, nr, soft, shadow}
		// at byte 8, nmi {injected, pending, masked} at byte 12.
		fmt.Fprintf(&b, "vCPU %d: mp_state %d rip %#x then %#x IF %v ISR %v IRR %v; interrupt injected %d nr %d shadow %d; nmi injected %d pending %d masked %d\n",
			i, mp, first[i], regs.RIP, regs.RFLAGS&(1<<9) != 0, vectors(lapic[:], lapicISR), vectors(lapic[:], lapicIRR),
			ev[8], ev[9], ev[11], ev[12], ev[13], ev[14])
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
