package kvm

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// abiChecks pairs each Go value with the C expression it must equal.
var abiChecks = []struct {
	c     string
	goVal uintptr
}{
	{"sizeof(struct kvm_regs)", unsafe.Sizeof(Regs{})},
	{"sizeof(struct kvm_segment)", unsafe.Sizeof(Segment{})},
	{"sizeof(struct kvm_dtable)", unsafe.Sizeof(DTable{})},
	{"sizeof(struct kvm_sregs)", unsafe.Sizeof(Sregs{})},
	{"offsetof(struct kvm_sregs, cr0)", unsafe.Offsetof(Sregs{}.CR0)},
	{"offsetof(struct kvm_sregs, apic_base)", unsafe.Offsetof(Sregs{}.APICBase)},
	{"sizeof(struct kvm_fpu)", unsafe.Sizeof(FPU{})},
	{"sizeof(struct kvm_lapic_state)", unsafe.Sizeof(LAPICState{})},
	{"sizeof(struct kvm_xcrs)", unsafe.Sizeof(XCRs{})},
	{"sizeof(struct kvm_vcpu_events)", unsafe.Sizeof(VCPUEvents{})},
	{"sizeof(struct kvm_debugregs)", unsafe.Sizeof(DebugRegs{})},
	{"sizeof(struct kvm_mp_state)", unsafe.Sizeof(MPState(0))},
	{"sizeof(struct kvm_irqchip)", unsafe.Sizeof(IRQChip{})},
	{"sizeof(struct kvm_pit_state2)", unsafe.Sizeof(PITState2{})},
	{"sizeof(struct kvm_pit_config)", unsafe.Sizeof(PITConfig{})},
	{"sizeof(struct kvm_irq_level)", unsafe.Sizeof(irqLevel{})},
	{"sizeof(struct kvm_clock_data)", unsafe.Sizeof(ClockData{})},
	{"offsetof(struct kvm_clock_data, realtime)", unsafe.Offsetof(ClockData{}.Realtime)},
	{"sizeof(struct kvm_enable_cap)", unsafe.Sizeof(enableCap{})},
	{"sizeof(struct kvm_userspace_memory_region)", unsafe.Sizeof(userspaceMemoryRegion{})},
	{"sizeof(struct kvm_msr_entry)", unsafe.Sizeof(MSREntry{})},
	{"sizeof(struct kvm_ioeventfd)", unsafe.Sizeof(ioeventfd{})},
	{"KVM_IOEVENTFD_FLAG_DEASSIGN", ioeventfdDeassign},
	{"sizeof(struct kvm_cpuid_entry2)", unsafe.Sizeof(CPUIDEntry{})},
	{"sizeof(struct kvm_xsave)", 4096},
	{"offsetof(struct kvm_cpuid2, entries)", unsafe.Offsetof(cpuid2{}.Entries)},
	{"offsetof(struct kvm_msrs, entries)", unsafe.Offsetof(msrs{}.Entries)},
	{"offsetof(struct kvm_msr_list, indices)", unsafe.Offsetof(msrList{}.Indices)},
	{"offsetof(struct kvm_run, exit_reason)", runExitReason},
	{"offsetof(struct kvm_run, immediate_exit)", 1},
	{"offsetof(struct kvm_run, io)", runUnion},
	{"offsetof(struct kvm_run, io.data_offset)", runUnion + 8},
	{"offsetof(struct kvm_run, mmio.len)", runUnion + 16},
	{"offsetof(struct kvm_run, mmio.is_write)", runUnion + 20},
	{"offsetof(struct kvm_run, msr.index)", runUnion + 12},
	{"offsetof(struct kvm_run, msr.data)", runUnion + 16},

	{"KVM_GET_API_VERSION", reqGetAPIVersion},
	{"KVM_CREATE_VM", reqCreateVM},
	{"KVM_GET_MSR_INDEX_LIST", reqGetMSRIndexList},
	{"KVM_GET_MSR_FEATURE_INDEX_LIST", reqGetMSRFeatureList},
	{"KVM_CHECK_EXTENSION", reqCheckExtension},
	{"KVM_GET_VCPU_MMAP_SIZE", reqGetVCPUMmapSize},
	{"KVM_GET_SUPPORTED_CPUID", reqGetSupportedCPUID},
	{"KVM_CREATE_VCPU", reqCreateVCPU},
	{"KVM_SET_USER_MEMORY_REGION", reqSetUserMemoryRegion},
	{"KVM_SET_TSS_ADDR", reqSetTSSAddr},
	{"KVM_SET_IDENTITY_MAP_ADDR", reqSetIdentityMapAddr},
	{"KVM_CREATE_IRQCHIP", reqCreateIRQChip},
	{"KVM_IRQ_LINE", reqIRQLine},
	{"KVM_GET_IRQCHIP", reqGetIRQChip},
	{"KVM_SET_IRQCHIP", reqSetIRQChip},
	{"KVM_CREATE_PIT2", reqCreatePIT2},
	{"KVM_SET_CLOCK", reqSetClock},
	{"KVM_GET_CLOCK", reqGetClock},
	{"KVM_GET_PIT2", reqGetPIT2},
	{"KVM_SET_PIT2", reqSetPIT2},
	{"KVM_ENABLE_CAP", reqEnableCap},
	{"KVM_X86_SET_MSR_FILTER", reqSetMSRFilter},
	{"KVM_SIGNAL_MSI", reqSignalMSI},
	{"KVM_IOEVENTFD", reqIOEventFD},
	{"sizeof(struct kvm_msi)", unsafe.Sizeof(MSI{})},
	{"sizeof(struct kvm_msr_filter)", unsafe.Sizeof(msrFilter{})},
	{"sizeof(struct kvm_msr_filter_range)", unsafe.Sizeof(msrFilterRange{})},
	{"offsetof(struct kvm_msr_filter_range, bitmap)", unsafe.Offsetof(msrFilterRange{}.Bitmap)},
	{"offsetof(struct kvm_msr_filter, ranges)", unsafe.Offsetof(msrFilter{}.Ranges)},
	{"KVM_MSR_FILTER_DEFAULT_DENY", msrFilterDefaultDeny},
	{"KVM_MSR_FILTER_MAX_BITMAP_SIZE", msrFilterMaxBitmap},
	{"KVM_MSR_EXIT_REASON_FILTER", MSRExitFilter},
	{"KVM_MSR_EXIT_REASON_UNKNOWN", MSRExitUnknown},
	{"KVM_SET_GSI_ROUTING", reqSetGSIRouting},
	{"sizeof(struct kvm_irq_routing_entry)", unsafe.Sizeof(routingEntry{})},
	{"offsetof(struct kvm_irq_routing_entry, u.msi.data)", unsafe.Offsetof(routingEntry{}.Data)},
	{"offsetof(struct kvm_irq_routing, entries)", unsafe.Offsetof(irqRouting{}.Entries)},
	{"KVM_IRQ_ROUTING_MSI", routeTypeMSI},
	{"offsetof(struct kvm_run, eoi.vector)", runUnion},
	{"KVM_RUN", reqRun},
	{"KVM_GET_REGS", reqGetRegs},
	{"KVM_SET_REGS", reqSetRegs},
	{"KVM_GET_SREGS", reqGetSregs},
	{"KVM_SET_SREGS", reqSetSregs},
	{"KVM_GET_MSRS", reqGetMSRs},
	{"KVM_SET_MSRS", reqSetMSRs},
	{"KVM_GET_FPU", reqGetFPU},
	{"KVM_SET_FPU", reqSetFPU},
	{"KVM_GET_LAPIC", reqGetLAPIC},
	{"KVM_SET_LAPIC", reqSetLAPIC},
	{"KVM_SET_CPUID2", reqSetCPUID2},
	{"KVM_GET_CPUID2", reqGetCPUID2},
	{"KVM_GET_MP_STATE", reqGetMPState},
	{"KVM_SET_MP_STATE", reqSetMPState},
	{"KVM_GET_VCPU_EVENTS", reqGetVCPUEvents},
	{"KVM_SET_VCPU_EVENTS", reqSetVCPUEvents},
	{"KVM_GET_DEBUGREGS", reqGetDebugRegs},
	{"KVM_SET_DEBUGREGS", reqSetDebugRegs},
	{"KVM_SET_TSC_KHZ", reqSetTSCKHz},
	{"KVM_GET_TSC_KHZ", reqGetTSCKHz},
	{"KVM_GET_XSAVE", reqGetXSave},
	{"KVM_SET_XSAVE", reqSetXSave},
	{"KVM_GET_XCRS", reqGetXCRs},
	{"KVM_SET_XCRS", reqSetXCRs},
	{"KVM_KVMCLOCK_CTRL", reqKVMClockCtrl},
	{"KVM_GET_XSAVE2", reqGetXSave2},

	{"KVM_CAP_IRQCHIP", uintptr(CapIRQChip)},
	{"KVM_CAP_PIT2", uintptr(CapPIT2)},
	{"KVM_CAP_ADJUST_CLOCK", uintptr(CapAdjustClock)},
	{"KVM_CAP_MAX_VCPUS", uintptr(CapMaxVCPUs)},
	{"KVM_CAP_TSC_DEADLINE_TIMER", uintptr(CapTSCDeadlineTimer)},
	{"KVM_CAP_READONLY_MEM", uintptr(CapReadonlyMem)},
	{"KVM_CAP_IOEVENTFD", uintptr(CapIOEventFD)},
	{"KVM_CAP_SPLIT_IRQCHIP", uintptr(CapSplitIRQChip)},
	{"KVM_CAP_IMMEDIATE_EXIT", uintptr(CapImmediateExit)},
	{"KVM_CAP_X86_USER_SPACE_MSR", uintptr(CapX86UserSpaceMSR)},
	{"KVM_CAP_X86_MSR_FILTER", uintptr(CapX86MSRFilter)},
	{"KVM_CAP_ENFORCE_PV_FEATURE_CPUID", uintptr(CapEnforcePVFeatureCPUID)},
	{"KVM_CAP_XSAVE2", uintptr(CapXSave2)},
	{"KVM_CAP_PMU_CAPABILITY", uintptr(CapPMUCapability)},
	{"KVM_EXIT_IO", uintptr(ExitIO)},
	{"KVM_EXIT_MMIO", uintptr(ExitMMIO)},
	{"KVM_EXIT_SHUTDOWN", uintptr(ExitShutdown)},
	{"KVM_EXIT_SYSTEM_EVENT", uintptr(ExitSystemEvent)},
	{"KVM_EXIT_X86_RDMSR", uintptr(ExitX86RDMSR)},
	{"KVM_EXIT_X86_WRMSR", uintptr(ExitX86WRMSR)},
	{"KVM_EXIT_IOAPIC_EOI", uintptr(ExitIOAPICEOI)},
	{"KVM_SYSTEM_EVENT_RESET", SystemEventReset},
	{"KVM_PIT_SPEAKER_DUMMY", PITSpeakerDummy},
	{"KVM_MEM_READONLY", memReadonly},
	{"KVM_CLOCK_REALTIME", ClockRealtime},
}

// TestABI compiles a C program against the system's <linux/kvm.h> and
// checks every struct size, offset, ioctl code and constant above.
func TestABI(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Fatalf("a C compiler is needed to check the KVM ABI against <linux/kvm.h>: %v (apt-get install gcc linux-libc-dev)", err)
	}
	var src bytes.Buffer
	src.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void) {\n")
	for _, c := range abiChecks {
		src.WriteString("\tprintf(\"%lu\\n\", (unsigned long)(" + c.c + "));\n")
	}
	src.WriteString("\treturn 0;\n}\n")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "abi.c"), src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "abi")
	if out, err := exec.Command(cc, "-o", bin, filepath.Join(dir, "abi.c")).CombinedOutput(); err != nil {
		t.Fatalf("compile the ABI check: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("run the ABI check: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for i := 0; sc.Scan(); i++ {
		want, err := strconv.ParseUint(strings.TrimSpace(sc.Text()), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if c := abiChecks[i]; uint64(c.goVal) != want {
			t.Errorf("%s = %#x in C, %#x in Go", c.c, want, c.goVal)
		}
	}
}
