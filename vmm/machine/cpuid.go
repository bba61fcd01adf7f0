package machine

import (
	"fmt"
	"strings"

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

// featureRegs are the CPUID registers that hold feature bits: a guest
// captured on one host may use every bit set there, so each must also be
// set in the CPU this host can give it. dynamic masks the bits KVM sets
// from the guest's own state rather than the host's (OSXSAVE from
// CR4.OSXSAVE, OSPKE from CR4.PKE, the APIC bit from the APIC base MSR):
// a booted guest has them whatever the host.
var featureRegs = []struct {
	fn, index uint32
	reg       string
	dynamic   uint32
}{
	{leafFeatures, 0, "ecx", 1 << 27}, {leafFeatures, 0, "edx", 1 << 9},
	{0x7, 0, "ebx", 0}, {0x7, 0, "ecx", 1 << 4}, {0x7, 0, "edx", 0}, {0x7, 1, "eax", 0},
	{0xd, 1, "eax", 0},
	{leafExtFeatures, 0, "ecx", 0}, {leafExtFeatures, 0, "edx", 1 << 9},
	{leafKVMFeatures, 0, "eax", 0},
}

func cpuidReg(es []kvm.CPUIDEntry, fn, index uint32, reg string) (uint32, bool) {
	for _, e := range es {
		if e.Function == fn && (e.Index == index || e.Flags&kvm.CPUIDFlagSignificantIndex == 0 && index == 0) {
			return map[string]uint32{"eax": e.EAX, "ebx": e.EBX, "ecx": e.ECX, "edx": e.EDX}[reg], true
		}
	}
	return 0, false
}

// checkCPUIDCompatible reports the features a saved guest CPU has that
// host, the CPU this host would give the same guest, lacks, and a vendor
// mismatch: such a guest may execute instructions that fault here.
func checkCPUIDCompatible(saved, host []kvm.CPUIDEntry) error {
	vendor := func(es []kvm.CPUIDEntry) [3]uint32 {
		b, _ := cpuidReg(es, 0, 0, "ebx")
		c, _ := cpuidReg(es, 0, 0, "ecx")
		d, _ := cpuidReg(es, 0, 0, "edx")
		return [3]uint32{b, d, c}
	}
	if v, h := vendor(saved), vendor(host); v != h {
		return fmt.Errorf("the guest's CPU vendor %q is not this host's %q", vendorString(v), vendorString(h))
	}
	var missing []string
	for _, r := range featureRegs {
		want, ok := cpuidReg(saved, r.fn, r.index, r.reg)
		if !ok || want == 0 {
			continue
		}
		have, _ := cpuidReg(host, r.fn, r.index, r.reg)
		if lack := want &^ have &^ r.dynamic; lack != 0 {
			missing = append(missing, fmt.Sprintf("leaf %#x.%d %s bits %#x", r.fn, r.index, strings.ToUpper(r.reg), lack))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the guest's CPU has features this host's KVM cannot offer: %s", strings.Join(missing, ", "))
	}
	return nil
}

func vendorString(v [3]uint32) string {
	var b []byte
	for _, w := range v {
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	return string(b)
}
