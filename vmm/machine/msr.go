package machine

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// msrWindow bounds how far apart two listed MSRs may be and still share
// one filter range (one bitmap).
const msrWindow = 0x1000

// msrRanges turns the profile's MSR entries into MSR filter ranges.
func msrRanges(p inventory.Profile) ([]kvm.MSRRange, error) {
	var ranges []kvm.MSRRange
	for _, e := range inventory.For(p) {
		if e.Space != inventory.SpaceMSR {
			continue
		}
		if n := len(ranges); n > 0 && e.End()-uint64(ranges[n-1].Base) <= msrWindow {
			r := &ranges[n-1]
			for uint64(r.Base)+uint64(len(r.Allow)) < e.End() {
				r.Allow = append(r.Allow, false)
			}
			for a := e.Base; a < e.End(); a++ {
				r.Allow[a-uint64(r.Base)] = true
			}
			continue
		}
		r := kvm.MSRRange{Base: uint32(e.Base), Allow: make([]bool, e.Size)}
		for i := range r.Allow {
			r.Allow[i] = true
		}
		ranges = append(ranges, r)
	}
	if len(ranges) > 16 {
		return nil, fmt.Errorf("profile %v lists MSRs in %d windows; the KVM MSR filter takes 16", p, len(ranges))
	}
	return ranges, nil
}

// setupMSRs makes KVM deny every MSR the profile does not list and pass the
// denied accesses to userspace, where they are counted (vcpu.handleMSR).
// With cfg.RecordMSRs every MSR access comes to userspace, to learn which
// MSRs a guest uses.
func (m *Machine) setupMSRs() error {
	for _, c := range []kvm.Cap{kvm.CapX86MSRFilter, kvm.CapX86UserSpaceMSR} {
		if m.sys.CheckExtension(c) == 0 {
			return fmt.Errorf("this host's KVM lacks capability %d, needed to enforce the MSR inventory", c)
		}
	}
	if err := m.vm.EnableCap(kvm.CapX86UserSpaceMSR, kvm.MSRExitFilter|kvm.MSRExitUnknown); err != nil {
		return err
	}
	var ranges []kvm.MSRRange
	if !m.cfg.RecordMSRs {
		var err error
		if ranges, err = msrRanges(m.cfg.Profile); err != nil {
			return err
		}
	}
	if err := m.registerMSRs(); err != nil {
		return err
	}
	return m.vm.SetMSRFilter(ranges)
}

// registerMSRs puts the profile's MSR entries on the MSR bus, for
// accounting.
func (m *Machine) registerMSRs() error {
	for _, e := range inventory.For(m.cfg.Profile) {
		if e.Space == inventory.SpaceMSR {
			if err := m.msr.Register(e, nil); err != nil {
				return err
			}
		}
	}
	return nil
}
