package machine

import (
	"encoding/binary"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
	"github.com/bunkerbuild/bunkerbuild/vmm/vcpu"
)

// Local APIC register offsets and LVT delivery modes, for virtual-wire
// mode: LINT0 passes the PIC's interrupts (ExtINT), LINT1 is the NMI pin.
const (
	apicLVTLINT0   = 0x350
	apicLVTLINT1   = 0x360
	apicModeMask   = 0x700
	apicModeNMI    = 0x400
	apicModeExtINT = 0x700
)

// createVCPUs creates every vCPU. For a boot (entry set) each gets the
// guest CPUID and local APIC wiring, and vCPU 0 starts at the kernel's
// 64-bit entry; the others wait in KVM for the INIT/SIPI sequence Linux
// sends through the in-kernel LAPIC. For a restore (saved set) each gets
// its saved state.
func (m *Machine) createVCPUs(entry *bootEntry, saved []VCPUState) error {
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	opts := cpuOptions{pv: pvFeatures(m.cfg.Profile), tscDeadline: m.sys.CheckExtension(kvm.CapTSCDeadlineTimer) != 0}
	if !opts.tscDeadline && !m.offers(inventory.KernelPIT) {
		return fmt.Errorf("profile %v has no PIT, so the guest needs the TSC-deadline timer, which this host's KVM lacks", m.cfg.Profile)
	}
	for id := 0; id < m.cfg.CPUs; id++ {
		c, err := m.vm.CreateVCPU(id)
		if err != nil {
			return err
		}
		m.close = append(m.close, c.Close)
		cpuid := guestCPUID(supported, id, m.cfg.CPUs, opts)
		if saved != nil {
			// The guest keeps the CPU it booted on, which this host must
			// be able to give it.
			if err := checkCPUIDCompatible(saved[id].CPUID, cpuid); err != nil {
				return fmt.Errorf("vCPU %d: %w", id, err)
			}
			cpuid = saved[id].CPUID
		}
		if err := c.SetCPUID(cpuid); err != nil {
			return err
		}
		// Without this, a guest can use KVM features CPUID does not offer.
		if err := c.EnableCap(kvm.CapEnforcePVFeatureCPUID, 1); err != nil {
			return err
		}
		switch {
		case saved != nil:
			if err := restoreVCPU(c, &saved[id]); err != nil {
				return err
			}
		case id == 0:
			if err := setLINTs(c); err != nil {
				return err
			}
			// Without an entry (a firmware boot) vCPU 0 stays at the
			// reset vector, where KVM puts a new vCPU.
			if entry != nil {
				if err := entry.apply(c); err != nil {
					return err
				}
			}
		default:
			if err := setLINTs(c); err != nil {
				return err
			}
		}
		exits := vcpu.Exits{PIO: m.pio, MMIO: m.mmio, MSR: m.msr}
		if m.ioapic != nil {
			exits.EOI = m.ioapic.EOI
		}
		v := vcpu.New(c, exits)
		if m.cfg.RecordMSRs {
			v.RecordMSRs()
		}
		m.cpus = append(m.cpus, v)
	}
	return nil
}

func setLINTs(c *kvm.VCPU) error {
	l, err := c.LAPIC()
	if err != nil {
		return err
	}
	set := func(reg int, mode uint32) {
		v := binary.LittleEndian.Uint32(l[reg:])
		binary.LittleEndian.PutUint32(l[reg:], v&^apicModeMask|mode)
	}
	set(apicLVTLINT0, apicModeExtINT)
	set(apicLVTLINT1, apicModeNMI)
	if err := c.SetLAPIC(l); err != nil {
		return fmt.Errorf("wire LINT0/LINT1 of vCPU %d: %w", c.ID, err)
	}
	return nil
}
