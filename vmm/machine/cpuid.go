package machine

import "github.com/bunkerbuild/bunkerbuild/vmm/kvm"

// CPUID leaves and bits we edit.
const (
	leafFeatures    = 0x1
	leafExtTopology = 0xb
	leafV2Topology  = 0x1f

	featHypervisor = 1 << 31 // leaf 1 ECX
)

// guestCPUID derives the CPUID for vCPU id of n from what KVM supports:
// each vCPU gets its own APIC ID and the hypervisor bit is set.
func guestCPUID(supported []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case leafFeatures:
			e.ECX |= featHypervisor
			// EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(n)<<16
			e.EDX |= 1 << 28 // HTT: EBX[23:16] is valid
		case leafExtTopology, leafV2Topology:
			e.EDX = uint32(id) // x2APIC ID
		}
	}
	return out
}
