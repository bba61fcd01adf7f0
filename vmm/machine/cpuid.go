package machine

import (
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// CPUID leaves and bits the guest CPU is built from. Both profiles show
// the guest the same CPU, so that a guest booted on the full profile finds
// nothing missing on the minimal one: features whose MSRs the minimal
// profile would deny are hidden from boot on.
const (
	leafFeatures    = 0x1
	leafPMU         = 0xa
	leafExtTopology = 0xb
	leafV2Topology  = 0x1f
	leafKVMBase     = 0x40000000
	leafKVMFeatures = 0x40000001
	leafExtFeatures = 0x80000001
	leafAMDPerfMon2 = 0x80000022

	// Leaf 1.
	ecxVMX         = 1 << 5  // nested VMX: its MSRs are not offered
	ecxPDCM        = 1 << 15 // IA32_PERF_CAPABILITIES
	ecxTSCDeadline = 1 << 24 // local APIC TSC-deadline mode, which KVM emulates but does not report
	ecxHypervisor  = 1 << 31
	edxMCE         = 1 << 7  // machine-check exception
	edxMTRR        = 1 << 12 // MTRRs: 28 MSRs a VM does not need (also in 0x80000001 EDX)
	edxMCA         = 1 << 14 // machine-check architecture: MCG_CAP and the bank MSRs
	edxHTT         = 1 << 28 // EBX[23:16] is valid

	// Leaf 0x80000001 ECX (AMD).
	ecxSVM         = 1 << 2  // nested SVM: its MSRs are not offered
	ecxPerfCtrCore = 1 << 23 // core performance counter extensions
	ecxPerfCtrNB   = 1 << 24 // northbridge counters
	ecxPerfCtrLLC  = 1 << 28 // last-level-cache counters
)

// pvFeatures returns the KVM_CPUID_FEATURES bits the profile offers.
func pvFeatures(p inventory.Profile) uint32 {
	var bits uint32
	for _, e := range inventory.For(p) {
		if e.Space == inventory.SpacePV && e.Base < 32 {
			bits |= 1 << e.Base
		}
	}
	return bits
}

// cpuOptions are the host facts the guest CPU depends on.
type cpuOptions struct {
	pv          uint32 // KVM_CPUID_FEATURES bits offered
	tscDeadline bool   // KVM_CAP_TSC_DEADLINE_TIMER
}

// guestCPUID derives the CPUID of vCPU id of n from what KVM supports: each
// vCPU gets its own APIC ID, the hypervisor bit is set, machine checks,
// MTRRs, the PMU and nested virtualization are hidden, the LAPIC offers
// TSC-deadline mode (the minimal profile has no PIT to calibrate its timer
// against), and the KVM leaf offers only the paravirtual features in pv.
func guestCPUID(supported []kvm.CPUIDEntry, id, n int, o cpuOptions) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	for _, e := range supported {
		switch e.Function {
		case leafFeatures:
			e.ECX = e.ECX&^(ecxVMX|ecxPDCM) | ecxHypervisor
			if o.tscDeadline {
				e.ECX |= ecxTSCDeadline
			}
			e.EDX = e.EDX&^(edxMCE|edxMTRR|edxMCA) | edxHTT
			// EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(n)<<16
		case leafPMU, leafAMDPerfMon2:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafExtTopology, leafV2Topology:
			e.EDX = uint32(id) // x2APIC ID
		case leafKVMBase:
			e.EAX = leafKVMFeatures // highest KVM leaf
		case leafKVMFeatures:
			e.EAX = o.pv
			e.EDX = 0 // no hints
		case leafExtFeatures:
			e.ECX &^= ecxSVM | ecxPerfCtrCore | ecxPerfCtrNB | ecxPerfCtrLLC
			e.EDX &^= edxMCE | edxMTRR | edxMCA
		}
		out = append(out, e)
	}
	return out
}
