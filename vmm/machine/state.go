package machine

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/acpipm"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/ioapic"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/serial"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// StateVersion is the version of the State encoding.
const StateVersion = 2

// VCPUState is the saved state of one vCPU.
type VCPUState struct {
	MPState   kvm.MPState      `json:"mp_state"`
	Regs      kvm.Regs         `json:"regs"`
	Sregs     kvm.Sregs        `json:"sregs"`
	XSave     []byte           `json:"xsave"`
	XCRs      kvm.XCRs         `json:"xcrs"`
	DebugRegs kvm.DebugRegs    `json:"debugregs"`
	LAPIC     kvm.LAPICState   `json:"lapic"`
	TSCKHz    uint32           `json:"tsc_khz"`
	CPUID     []kvm.CPUIDEntry `json:"cpuid"`
	MSRs      []kvm.MSREntry   `json:"msrs"`
	Events    kvm.VCPUEvents   `json:"events"`
}

// State is everything of a paused machine but guest memory, in the form
// the minimal profile restores: the state of legacy devices is not carried
// (the handoff rule), and the interrupt controllers are the userspace
// IOAPIC's registers whichever irqchip the machine had.
type State struct {
	Version int         `json:"version"`
	CPUs    int         `json:"cpus"`
	Memory  uint64      `json:"memory"`
	VCPUs   []VCPUState `json:"vcpus"`

	IOAPIC ioapic.State  `json:"ioapic"`
	Clock  kvm.ClockData `json:"clock"`
	PM     acpipm.State  `json:"acpi_pm"`
	Serial *serial.State `json:"serial,omitempty"`
	PCI    *PCIState     `json:"pci,omitempty"`
}

// NotQuiescentError says why a legacy device's state cannot be dropped.
type NotQuiescentError struct {
	Device string
	Reason string
}

func (e *NotQuiescentError) Error() string {
	return fmt.Sprintf("legacy device %s is not quiescent: %s", e.Device, e.Reason)
}

// Capture saves the state of the paused machine. Call Pause first. It
// fails with a *NotQuiescentError if a legacy device holds state the
// guest still depends on.
func (m *Machine) Capture() (*State, error) {
	for _, v := range m.cpus {
		if !v.Paused() {
			return nil, errNotPaused
		}
	}
	if err := m.checkQuiescent(); err != nil {
		return nil, err
	}
	st := &State{Version: StateVersion, CPUs: m.cfg.CPUs, Memory: m.cfg.Memory}
	msrIndex, err := m.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	for _, v := range m.cpus {
		vs, err := saveVCPU(v.KVM(), msrIndex)
		if err != nil {
			return nil, err
		}
		st.VCPUs = append(st.VCPUs, vs)
	}
	if st.IOAPIC, err = m.saveIOAPIC(); err != nil {
		return nil, err
	}
	if st.Clock, err = m.vm.Clock(); err != nil {
		return nil, err
	}
	st.PM = m.pm.State()
	if st.PCI, err = m.savePCI(); err != nil {
		return nil, err
	}
	if m.uart != nil {
		s := m.uart.State()
		st.Serial = &s
	}
	return st, nil
}

// saveVCPU saves one vCPU in the order KVM needs: MP_STATE first (reading
// it runs pending APIC events), VCPU_EVENTS last.
func saveVCPU(c *kvm.VCPU, msrIndex []uint32) (VCPUState, error) {
	var s VCPUState
	var err error
	if s.MPState, err = c.MPState(); err != nil {
		return s, err
	}
	if s.Regs, err = c.Regs(); err != nil {
		return s, err
	}
	if s.Sregs, err = c.Sregs(); err != nil {
		return s, err
	}
	if s.XSave, err = c.XSave(); err != nil {
		return s, err
	}
	if s.XCRs, err = c.XCRs(); err != nil {
		return s, err
	}
	if s.DebugRegs, err = c.DebugRegs(); err != nil {
		return s, err
	}
	if s.LAPIC, err = c.LAPIC(); err != nil {
		return s, err
	}
	if s.TSCKHz, err = c.TSCKHz(); err != nil {
		return s, err
	}
	if s.CPUID, err = c.CPUID(); err != nil {
		return s, err
	}
	if s.MSRs, err = readMSRs(c, msrIndex); err != nil {
		return s, err
	}
	if s.Events, err = c.VCPUEvents(); err != nil {
		return s, err
	}
	return s, nil
}

// readMSRs reads every MSR of KVM's index list that this vCPU has; KVM
// lists MSRs some vCPUs lack (their CPUID hides the feature), and
// KVM_GET_MSRS stops at the first of those.
func readMSRs(c *kvm.VCPU, index []uint32) ([]kvm.MSREntry, error) {
	const batch = 256
	var out []kvm.MSREntry
	for len(index) > 0 {
		part := index[:min(batch, len(index))]
		got, n, err := c.MSRsPartial(part)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		if n < len(part) {
			n++ // skip the one KVM refused
		}
		index = index[n:]
	}
	return out, nil
}

// Offsets in struct kvm_pic_state and kvm_ioapic_state.
const (
	picIRR = 1
	picIMR = 2
	picISR = 3

	ioapicIOREGSEL = 8
	ioapicID       = 12
	ioapicRedir    = 24

	pitChannelSize = 24
	pitMode        = 13
	pitGate        = 15
)

// checkQuiescent applies the handoff rule: the state of the legacy devices
// is dropped, so none of them may hold anything the guest still needs.
func (m *Machine) checkQuiescent() error {
	if m.boot != nil {
		if ok, dev, why := m.boot.Quiescent(); !ok {
			return &NotQuiescentError{Device: dev, Reason: why}
		}
	}
	if pm := m.pm.State(); m.offers(inventory.ACPIEvt) && pm.Status&pm.Enable != 0 {
		return &NotQuiescentError{Device: "ACPI PM1 event block", Reason: fmt.Sprintf("enabled events pending (PM1_STS %#04x, PM1_EN %#04x)", pm.Status, pm.Enable)}
	}
	if !m.offers(inventory.KernelPIC) {
		return nil
	}
	for _, chip := range []struct {
		id   uint32
		name string
	}{{kvm.ChipPICMaster, "PIC master"}, {kvm.ChipPICSlave, "PIC slave"}} {
		c, err := m.vm.IRQChip(chip.id)
		if err != nil {
			return err
		}
		if pending := c.Chip[picIRR] &^ c.Chip[picIMR]; pending != 0 {
			return &NotQuiescentError{Device: chip.name, Reason: fmt.Sprintf("unmasked interrupt requests pending (IRR %#02x, IMR %#02x)", c.Chip[picIRR], c.Chip[picIMR])}
		}
		if c.Chip[picISR] != 0 {
			return &NotQuiescentError{Device: chip.name, Reason: fmt.Sprintf("interrupts in service (ISR %#02x)", c.Chip[picISR])}
		}
	}
	if m.offers(inventory.KernelPIT) {
		if err := m.checkPIT(); err != nil {
			return err
		}
	}
	return nil
}

// checkPIT refuses a PIT that still drives the guest's timer: channel 0
// counting periodically with its interrupt unmasked at the IOAPIC or the
// PIC.
func (m *Machine) checkPIT() error {
	pit, err := m.vm.PIT2()
	if err != nil {
		return err
	}
	mode := pit[pitMode]
	periodic := mode == 2 || mode == 3 || mode == 6 || mode == 7
	if !periodic {
		return nil
	}
	irq := inventory.MustGet(inventory.PITPorts).IRQ
	io, err := m.vm.IRQChip(kvm.ChipIOAPIC)
	if err != nil {
		return err
	}
	redir := binary.LittleEndian.Uint64(io.Chip[ioapicRedir+8*irq:])
	pic, err := m.vm.IRQChip(kvm.ChipPICMaster)
	if err != nil {
		return err
	}
	if redir&(1<<16) == 0 || pic.Chip[picIMR]&(1<<irq) == 0 {
		return &NotQuiescentError{Device: "PIT", Reason: fmt.Sprintf("channel 0 runs in periodic mode %d with its interrupt unmasked: the guest still uses it as its timer", mode)}
	}
	return nil
}

// saveIOAPIC returns the IOAPIC registers as the userspace IOAPIC holds
// them, from KVM's IOAPIC or from the userspace one.
func (m *Machine) saveIOAPIC() (ioapic.State, error) {
	if m.ioapic != nil {
		return m.ioapic.State(), nil
	}
	c, err := m.vm.IRQChip(kvm.ChipIOAPIC)
	if err != nil {
		return ioapic.State{}, err
	}
	var s ioapic.State
	s.Select = binary.LittleEndian.Uint32(c.Chip[ioapicIOREGSEL:])
	s.ID = binary.LittleEndian.Uint32(c.Chip[ioapicID:]) << 24 // KVM keeps the 4-bit ID unshifted
	for i := range s.Redir {
		s.Redir[i] = binary.LittleEndian.Uint64(c.Chip[ioapicRedir+8*i:])
	}
	return s, nil
}

var errNotPaused = errors.New("machine is running; pause it first")
