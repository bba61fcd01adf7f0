package machine

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/boot/acpi"
	"github.com/bunkerbuild/bunkerbuild/vmm/boot/linux"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// bootEntry is vCPU 0's state at the kernel's 64-bit entry.
type bootEntry linux.Entry

// loadGuest writes the ACPI tables, the kernel, its initrd and boot_params
// into guest memory.
func (m *Machine) loadGuest() (*bootEntry, error) {
	rsdp, err := acpi.Build(m.mem, m.acpiConfig())
	if err != nil {
		return nil, fmt.Errorf("build ACPI tables: %w", err)
	}
	p := linux.Params{
		Kernel:  m.cfg.Kernel,
		Cmdline: m.cfg.Cmdline,
		E820:    memory.E820(m.cfg.Memory),
		RSDP:    rsdp,
	}
	if m.cfg.Initrd != nil && m.cfg.Initrd.Size() > 0 {
		p.Initrd = m.cfg.Initrd
		p.InitrdSize = m.cfg.Initrd.Size()
	}
	l, err := linux.Load(m.mem, p)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	e := bootEntry(l.Entry)
	return &e, nil
}

// acpiConfig describes the machine to its ACPI tables, whichever way
// they reach the guest.
func (m *Machine) acpiConfig() acpi.Config {
	c := acpi.ForProfile(m.cfg.Profile, m.cfg.CPUs)
	c.Handoff = m.cfg.Handoff
	return c
}

func seg(s linux.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

// apply puts a vCPU in the entry state.
func (e bootEntry) apply(c *kvm.VCPU) error {
	s, err := c.Sregs()
	if err != nil {
		return err
	}
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS, s.TR = seg(e.CS), seg(e.DS), seg(e.ES), seg(e.FS), seg(e.GS), seg(e.SS), seg(e.TR)
	s.GDT = kvm.DTable{Base: e.GDT.Base, Limit: e.GDT.Limit}
	s.IDT = kvm.DTable{Base: e.IDT.Base, Limit: e.IDT.Limit}
	s.CR0, s.CR3, s.CR4, s.EFER = e.CR0, e.CR3, e.CR4, e.EFER
	if err := c.SetSregs(s); err != nil {
		return err
	}
	return c.SetRegs(kvm.Regs{RIP: e.RIP, RSP: e.RSP, RSI: e.RSI, RFLAGS: e.RFLAGS})
}
