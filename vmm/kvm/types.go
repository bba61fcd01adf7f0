package kvm

// Go mirrors of the KVM structs. Layouts match <linux/kvm.h> and
// <asm/kvm.h> on x86-64 field for field; kvm_test.go compares every size
// with the C compiler's. State the VMM only saves and restores is kept as
// opaque bytes so that it travels unchanged.

// Regs is struct kvm_regs.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu, kept opaque.
type FPU [416]byte

// LAPICState is struct kvm_lapic_state: the local APIC register page.
type LAPICState [1024]byte

// XCRs is struct kvm_xcrs, kept opaque.
type XCRs [392]byte

// VCPUEvents is struct kvm_vcpu_events, kept opaque.
type VCPUEvents [64]byte

// DebugRegs is struct kvm_debugregs, kept opaque.
type DebugRegs [128]byte

// XSave is struct kvm_xsave. With KVM_CAP_XSAVE2 the area can be larger
// than 4 KiB, so it is a byte slice sized by XSaveSize.
type XSave []byte

// MPState is struct kvm_mp_state.
type MPState uint32

// MP states.
const (
	MPStateRunnable      MPState = 0
	MPStateUninitialized MPState = 1
	MPStateInitReceived  MPState = 2
	MPStateHalted        MPState = 3
	MPStateSIPIReceived  MPState = 4
)

// IRQChip is struct kvm_irqchip: the state of one in-kernel PIC or the IOAPIC.
type IRQChip struct {
	ChipID uint32
	_      uint32
	Chip   [512]byte
}

// Chip IDs for IRQChip.
const (
	ChipPICMaster = 0
	ChipPICSlave  = 1
	ChipIOAPIC    = 2
)

// PITState2 is struct kvm_pit_state2, kept opaque.
type PITState2 [112]byte

// PITConfig is struct kvm_pit_config.
type PITConfig struct {
	Flags uint32
	_     [15]uint32
}

// PITSpeakerDummy makes KVM answer port 0x61 reads itself.
const PITSpeakerDummy = 1

type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// ClockData is struct kvm_clock_data.
type ClockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

// Clock flags.
const (
	ClockTSCStable = 2
	ClockRealtime  = 1 << 2
	ClockHostTSC   = 1 << 3
)

type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUID entry flags.
const CPUIDFlagSignificantIndex = 1

// maxCPUIDEntries and maxMSRs bound the variable-length arrays we pass.
const (
	maxCPUIDEntries = 256
	maxMSRs         = 1024
)

type cpuid2 struct {
	Nent    uint32
	_       uint32
	Entries [maxCPUIDEntries]CPUIDEntry
}

type msrs struct {
	NMSRs   uint32
	_       uint32
	Entries [maxMSRs]MSREntry
}

type msrList struct {
	NMSRs   uint32
	Indices [maxMSRs]uint32
}
