package machine

import (
	"errors"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Restore creates a machine from a captured State. fill writes the saved
// guest memory into the new machine's RAM before any vCPU exists. The
// configuration's profile must have no PIC (the minimal profile): the
// State carries the userspace IOAPIC's registers, and the legacy devices'
// state was dropped at capture.
func Restore(cfg Config, st *State, fill func(*memory.Guest) error) (_ *Machine, err error) {
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	cfg.CPUs, cfg.Memory = st.CPUs, st.Memory
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if inventory.MustGet(inventory.KernelPIC).In(cfg.Profile) {
		return nil, fmt.Errorf("%w: restore onto profile %v: snapshots resume on a profile without the legacy interrupt controllers", ErrInvalid, cfg.Profile)
	}
	if st.PCI != nil && cfg.NIC == nil {
		for _, d := range st.PCI.Devices {
			if d.ID == inventory.VirtioNet {
				// The guest has a NIC: it keeps it, disconnected. Its MAC
				// comes from the snapshot.
				cfg.NIC = &NIC{}
			}
		}
	}
	m, err := newMachine(cfg)
	if err != nil {
		return nil, err
	}
	m.restored = true
	m.input = inputSerial
	// The console the guest booted with, or hvc0 when that was the serial
	// port and it is gone: a guest whose command line the VMM did not know
	// (a firmware boot of a given disk) may well use hvc0, and it is the
	// only console left.
	if st.PCI != nil && (st.PCI.Input == inputVirtio || !m.offersEntry(inventory.COM1)) {
		m.input = inputVirtio
	}
	if st.Serial != nil && !cfg.SerialConsole {
		m.cfg.Log.Printf("the snapshot had a serial console; resuming without one")
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if err = fill(m.mem); err != nil {
		return nil, fmt.Errorf("restore guest memory: %w", err)
	}
	if err = m.createVM(); err != nil {
		return nil, err
	}
	// The clock first: the vCPUs' kvmclock MSRs refer to it.
	if err = m.restoreClock(st.Clock); err != nil {
		return nil, err
	}
	m.ioapic.SetState(st.IOAPIC)
	m.pm.SetState(st.PM)
	if m.uart != nil && st.Serial != nil {
		m.uart.SetState(*st.Serial)
	}
	if err = m.restorePCI(st.PCI); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err = m.createVCPUs(nil, st.VCPUs); err != nil {
		return nil, err
	}
	for _, v := range m.cpus {
		// Tell the guest's kvmclock the vCPU was stopped, so that its
		// watchdogs do not take the pause for a lockup. A guest without
		// kvmclock makes this fail harmlessly.
		_ = v.KVM().KVMClockCtrl()
	}
	return m, nil
}

// Validate bounds an untrusted State before it reaches KVM.
func (st *State) Validate() error {
	switch {
	case st == nil:
		return errors.New("no machine state")
	case st.Version != StateVersion:
		return fmt.Errorf("machine state version %d, this VMM reads version %d", st.Version, StateVersion)
	case st.CPUs < 1 || st.CPUs > MaxCPUs || len(st.VCPUs) != st.CPUs:
		return fmt.Errorf("machine state has %d vCPUs and %d vCPU states", st.CPUs, len(st.VCPUs))
	}
	if st.Memory < memory.MinSize || st.Memory > memory.MaxSize || st.Memory%memory.PageSize != 0 {
		return fmt.Errorf("machine state has %d bytes of memory", st.Memory)
	}
	for i, v := range st.VCPUs {
		if len(v.CPUID) == 0 || len(v.CPUID) > 256 || len(v.MSRs) > 1024 || len(v.XSave) < 4096 || len(v.XSave) > 1<<20 {
			return fmt.Errorf("vCPU %d state: %d CPUID entries, %d MSRs, %d XSAVE bytes: out of bounds", i, len(v.CPUID), len(v.MSRs), len(v.XSave))
		}
		if v.MPState > kvm.MPStateSIPIReceived {
			return fmt.Errorf("vCPU %d state: MP state %d", i, v.MPState)
		}
	}
	for pin, r := range st.IOAPIC.Redir {
		if r&0xff < 0x10 && r&(1<<16) == 0 {
			return fmt.Errorf("IOAPIC pin %d: unmasked with reserved vector %#x", pin, r&0xff)
		}
	}
	return nil
}

// restoreVCPU loads a vCPU's saved state in the order KVM needs: REGS
// before VCPU_EVENTS (setting registers clears pending exceptions), SREGS
// (the APIC base) before LAPIC, LAPIC before the MSRs (or the TSC-deadline
// MSR is lost), VCPU_EVENTS last.
func restoreVCPU(c *kvm.VCPU, s *VCPUState) error {
	if err := c.SetMPState(s.MPState); err != nil {
		return err
	}
	if err := c.SetRegs(s.Regs); err != nil {
		return err
	}
	if err := c.SetSregs(s.Sregs); err != nil {
		return err
	}
	if err := c.SetXSave(s.XSave); err != nil {
		return err
	}
	if err := c.SetXCRs(s.XCRs); err != nil {
		return err
	}
	if err := c.SetDebugRegs(s.DebugRegs); err != nil {
		return err
	}
	if err := c.SetLAPIC(s.LAPIC); err != nil {
		return err
	}
	if err := c.SetMSRs(s.MSRs); err != nil {
		return err
	}
	return c.SetVCPUEvents(s.Events)
}

// restoreClock sets kvmclock to its captured value, advanced by the
// wall-clock time since capture where KVM can do that (KVM_CLOCK_REALTIME),
// so that the guest's clock does not lag by the downtime.
func (m *Machine) restoreClock(c kvm.ClockData) error {
	want := c
	want.Flags = 0
	if c.Flags&kvm.ClockRealtime != 0 && m.sys.CheckExtension(kvm.CapAdjustClock)&kvm.ClockRealtime != 0 {
		want.Flags = kvm.ClockRealtime
	}
	return m.vm.SetClock(want)
}
