package main

// cpuid executes the CPUID instruction with EAX=leaf and ECX=subleaf and
// returns the four result registers. golang.org/x/sys/cpu keeps its own
// CPUID private, hence this one (cpuid_amd64.s). In a guest, CPUID always
// exits to the hypervisor, which answers it: that is what the probe wants.
func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)
