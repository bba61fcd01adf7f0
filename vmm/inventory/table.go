package inventory

// IDs of the entries that userspace devices and the machine look up.
const (
	PICMaster  ID = "pic-master"
	PICSlave   ID = "pic-slave"
	ELCR       ID = "pic-elcr"
	PITPorts   ID = "pit"
	PortB      ID = "pit-port-b"
	I8042Data  ID = "i8042-data"
	I8042Cmd   ID = "i8042-cmd"
	CMOS       ID = "cmos"
	POST       ID = "post"
	COM1       ID = "com1"
	ACPIEvt    ID = "acpi-pm1-evt"
	ACPICnt    ID = "acpi-pm1-cnt"
	IOAPICMem  ID = "ioapic-mmio"
	IOAPICUser ID = "ioapic-mmio-user"
	LAPICMem   ID = "lapic-mmio"

	PCIConfigAddress ID = "pci-config-address"
	PCIConfigData    ID = "pci-config-data"
	PCIWindow        ID = "pci-bar-window"
	PCIHostBridge    ID = "pci-host-bridge"
	VirtioEntropy    ID = "virtio-rng"
	VirtioConsole    ID = "virtio-console"
	VirtioBlock      ID = "virtio-blk"
	VirtioNet        ID = "virtio-net"

	A20Gate    ID = "port-92"
	FwCfg      ID = "fw-cfg"
	FwCfgDMA   ID = "fw-cfg-dma"
	BIOSROM    ID = "bios-rom"
	ISABridge  ID = "piix3-isa"
	PMFunction ID = "piix4-pm"

	KVMClockMSRs ID = "kvmclock-msrs"

	PVClockSource2 ID = "pv-clocksource2"
	PVClockStable  ID = "pv-clocksource-stable"
	PVNopIODelay   ID = "pv-nop-io-delay"

	KernelLAPIC  ID = "kvm-lapic"
	KernelIOAPIC ID = "kvm-ioapic"
	KernelPIC    ID = "kvm-pic"
	KernelPIT    ID = "kvm-pit"
)

const both = Full | Minimal

// table is the inventory. Keep it sorted by space, then base; the tests
// check that it is.
var table = []Entry{
	// I/O ports.
	{ID: PICMaster, Space: SpacePIO, Base: 0x20, Size: 2, Class: Legacy, Owner: "kvm-pic", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "8259 master: interrupt delivery before the IOAPIC is set up"},
	{ID: PITPorts, Space: SpacePIO, Base: 0x40, Size: 4, Class: Legacy, Owner: "kvm-pit", Profiles: Full, IRQ: 0, InKernel: true,
		Why: "8254 timer: early timer interrupt and TSC/LAPIC timer calibration"},
	{ID: I8042Data, Space: SpacePIO, Base: 0x60, Size: 1, Class: Legacy, Owner: "i8042", Profiles: Full, IRQ: 1,
		Why: "keyboard controller data port: probed by Linux at boot"},
	{ID: PortB, Space: SpacePIO, Base: 0x61, Size: 1, Class: Legacy, Owner: "kvm-pit", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "system control port B: PIT channel 2 gate, used to calibrate the TSC"},
	{ID: I8042Cmd, Space: SpacePIO, Base: 0x64, Size: 1, Class: Legacy, Owner: "i8042", Profiles: Full, IRQ: -1,
		Why: "keyboard controller command port: the CPU reset command (reboot=k)"},
	{ID: CMOS, Space: SpacePIO, Base: 0x70, Size: 2, Class: Legacy, Owner: "cmos", Profiles: Full, IRQ: 8,
		Why: "CMOS/RTC: wall-clock time before kvmclock, memory size for firmware"},
	{ID: POST, Space: SpacePIO, Base: 0x80, Size: 1, Class: Legacy, Owner: "post", Profiles: Full, IRQ: -1,
		Why: "POST diagnostic port: I/O delay writes"},
	{ID: A20Gate, Space: SpacePIO, Base: 0x92, Size: 1, Class: Legacy, Owner: "port-92", Profiles: Firmware, IRQ: -1,
		Why: "System Control Port A: the fast A20 gate the BIOS opens, and its reset bit"},
	{ID: PICSlave, Space: SpacePIO, Base: 0xa0, Size: 2, Class: Legacy, Owner: "kvm-pic", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "8259 slave"},
	{ID: COM1, Space: SpacePIO, Base: 0x3f8, Size: 8, Class: Console, Owner: "serial", Profiles: Full, IRQ: 4,
		Why: "16550A console; extraneous, offered as the boot console and as an explicit opt-in"},
	{ID: ELCR, Space: SpacePIO, Base: 0x4d0, Size: 2, Class: Legacy, Owner: "kvm-pic", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "8259 edge/level control"},
	{ID: FwCfg, Space: SpacePIO, Base: 0x510, Size: 2, Class: Legacy, Owner: "fw-cfg", Profiles: Firmware, IRQ: -1,
		Why: "firmware configuration selector (16-bit) and data (8-bit): the memory map, CPU count, boot order and ACPI tables SeaBIOS reads"},
	{ID: FwCfgDMA, Space: SpacePIO, Base: 0x514, Size: 8, Class: Legacy, Owner: "fw-cfg", Profiles: Firmware, IRQ: -1,
		Why: "firmware configuration DMA address (big-endian, high half then low half, which starts the transfer)"},
	{ID: ACPIEvt, Space: SpacePIO, Base: 0x600, Size: 4, Class: Legacy, Owner: "acpi-pm", Profiles: Full, IRQ: 9,
		Why: "ACPI PM1a event block: fixed-event setup while ACPI starts; a booted guest needs it only for power-button events, which production never sends"},
	{ID: ACPICnt, Space: SpacePIO, Base: 0x604, Size: 2, Class: Required, Owner: "acpi-pm", Profiles: both, IRQ: -1,
		Why: "ACPI PM1a control block: guest power-off (S5)"},

	{ID: PCIConfigAddress, Space: SpacePIO, Base: 0xcf8, Size: 4, Class: Required, Owner: "pci-host", Profiles: both, IRQ: -1,
		Why: "PCI configuration mechanism #1 address register: how an OS finds its storage, network and console devices (dword accesses only)"},
	{ID: PCIConfigData, Space: SpacePIO, Base: 0xcfc, Size: 4, Class: Required, Owner: "pci-host", Profiles: both, IRQ: -1,
		Why: "PCI configuration mechanism #1 data window: configuration space of bus 0, writes masked bit by bit"},

	// MMIO.
	{ID: PCIWindow, Space: SpaceMMIO, Base: 0xe0000000, Size: 0x1ec00000, Class: Required, Owner: "pci-host", Profiles: both, IRQ: -1,
		Why: "PCI memory window: the virtio devices' BARs (common config, notify, ISR, device config, MSI-X); only placed BARs with decoding on answer"},
	{ID: IOAPICMem, Space: SpaceMMIO, Base: 0xfec00000, Size: 0x1000, Class: Required, Owner: "kvm-ioapic", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "IOAPIC registers: routing of device interrupts (KVM's IOAPIC, next to its PIC)"},
	{ID: IOAPICUser, Space: SpaceMMIO, Base: 0xfec00000, Size: 0x1000, Class: Required, Owner: "ioapic", Profiles: Minimal, IRQ: -1,
		Why: "IOAPIC registers: routing of device interrupts as MSIs (split irqchip: no PIC, no PIT)"},
	{ID: LAPICMem, Space: SpaceMMIO, Base: 0xfee00000, Size: 0x1000, Class: Required, Owner: "kvm-lapic", Profiles: both, IRQ: -1, InKernel: true,
		Why: "local APIC registers (xAPIC mode): timer, IPIs, EOI"},
	// Reads of the ROM are KVM's (a read-only memory slot); writes exit
	// and are dropped.
	{ID: BIOSROM, Space: SpaceMMIO, Base: 0xfffc0000, Size: 0x40000, Class: Legacy, Owner: "firmware", Profiles: Firmware, IRQ: -1,
		Why: "the BIOS image, read-only, ending at 4 GiB where the CPU starts; its last 128 KiB is also copied to RAM at 0xE0000, which SeaBIOS shadows"},

	// MSRs. KVM serves them; its MSR filter denies every MSR not listed
	// for the machine's profile. The list is what the stock Debian 6.12
	// kernel used while booting and running on our guest CPU (found with
	// `bunkerbuild run --record-msrs --report`), plus the mitigation and
	// timer MSRs a host CPU may add. The guest CPU hides machine checks,
	// MTRRs, the PMU and nested virtualization, so their MSRs are absent.
	{ID: "msr-apic-base", Space: SpaceMSR, Base: 0x1b, Size: 1, Class: Required, Owner: "kvm-lapic", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_APIC_BASE: local APIC enable and x2APIC mode"},
	{ID: "msr-tsc-adjust", Space: SpaceMSR, Base: 0x3b, Size: 1, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_TSC_ADJUST: read by the TSC synchronisation checks, also after boot"},
	{ID: "msr-spec-ctrl", Space: SpaceMSR, Base: 0x48, Size: 2, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_SPEC_CTRL and IA32_PRED_CMD: Spectre mitigations, where the host CPU offers IBRS/IBPB/SSBD"},
	{ID: "msr-ucode-rev", Space: SpaceMSR, Base: 0x8b, Size: 1, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_UCODE_REV: read at boot by the microcode and mitigation code"},
	{ID: "msr-arch-capabilities", Space: SpaceMSR, Base: 0x10a, Size: 1, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_ARCH_CAPABILITIES: which CPU vulnerabilities need mitigating"},
	{ID: "msr-sysenter", Space: SpaceMSR, Base: 0x174, Size: 3, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_SYSENTER_CS/ESP/EIP: 32-bit system call entry, set at boot"},
	{ID: "msr-pat", Space: SpaceMSR, Base: 0x277, Size: 1, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_PAT: memory types of page mappings"},
	{ID: "msr-tsc-deadline", Space: SpaceMSR, Base: 0x6e0, Size: 1, Class: Required, Owner: "kvm-lapic", Profiles: both, IRQ: -1, InKernel: true,
		Why: "IA32_TSC_DEADLINE: the local APIC timer, where CPUID offers TSC-deadline mode"},
	{ID: KVMClockMSRs, Space: SpaceMSR, Base: 0x4b564d00, Size: 2, Class: Required, Owner: "kvmclock", Profiles: both, IRQ: -1, InKernel: true,
		Why: "MSR_KVM_WALL_CLOCK_NEW and MSR_KVM_SYSTEM_TIME_NEW: the guest's clocksource and wall clock"},
	{ID: "msr-syscall", Space: SpaceMSR, Base: 0xc0000080, Size: 5, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "EFER, STAR, LSTAR, CSTAR, SFMASK: long mode and the system call entry"},
	{ID: "msr-segment-bases", Space: SpaceMSR, Base: 0xc0000100, Size: 4, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX: per-CPU data, thread pointers, RDTSCP/RDPID"},
	{ID: "msr-amd-de-cfg", Space: SpaceMSR, Base: 0xc0011029, Size: 1, Class: Required, Owner: "kvm-msrs", Profiles: both, IRQ: -1, InKernel: true,
		Why: "AMD DE_CFG: makes LFENCE serializing, a Spectre v1 mitigation on AMD CPUs"},

	// Paravirtual features, as KVM_CPUID_FEATURES bits (Base is the bit).
	{ID: PVNopIODelay, Space: SpacePV, Base: 1, Size: 1, Class: Required, Owner: "cpuid", Profiles: both, IRQ: -1, InKernel: true,
		Why: "KVM_FEATURE_NOP_IO_DELAY: no port 0x80 delays; a hint with no entry point of its own"},
	{ID: PVClockSource2, Space: SpacePV, Base: 3, Size: 1, Class: Required, Owner: "kvmclock", Profiles: both, IRQ: -1, InKernel: true,
		Why: "KVM_FEATURE_CLOCKSOURCE2: kvmclock through the MSRs above"},
	{ID: PVClockStable, Space: SpacePV, Base: 24, Size: 1, Class: Required, Owner: "kvmclock", Profiles: both, IRQ: -1, InKernel: true,
		Why: "KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: kvmclock is monotonic across vCPUs"},

	// Devices KVM emulates in the kernel.
	{ID: KernelPIC, Space: SpaceKernel, Size: 1, Class: Legacy, Owner: "kvm-pic", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "in-kernel 8259 pair (KVM_CREATE_IRQCHIP)"},
	{ID: KernelPIT, Space: SpaceKernel, Size: 1, Class: Legacy, Owner: "kvm-pit", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "in-kernel 8254 (KVM_CREATE_PIT2)"},
	{ID: KernelIOAPIC, Space: SpaceKernel, Size: 1, Class: Required, Owner: "kvm-ioapic", Profiles: Full, IRQ: -1, InKernel: true,
		Why: "in-kernel IOAPIC (KVM_CREATE_IRQCHIP); the minimal profile has a userspace one"},
	{ID: KernelLAPIC, Space: SpaceKernel, Size: 1, Class: Required, Owner: "kvm-lapic", Profiles: both, IRQ: -1, InKernel: true,
		Why: "in-kernel local APIC, one per vCPU"},

	// PCI functions on bus 0 (Base is the first slot, Size the number of
	// slots). Each is reached only through the configuration ports and
	// its BAR in the PCI window above, and interrupts only with MSI-X.
	{ID: PCIHostBridge, Space: SpacePCI, Base: 0, Size: 1, Class: Required, Owner: "pci-host", Profiles: both, IRQ: -1,
		Why: "host bridge function 00.0: the OS's sanity check for configuration mechanism #1 looks for it"},
	{ID: VirtioEntropy, Space: SpacePCI, Base: 1, Size: 1, Class: Required, Owner: "virtio-rng", Profiles: both, IRQ: -1,
		Why: "virtio-rng: fresh host entropy, so each guest resumed from one artifact diverges"},
	{ID: VirtioConsole, Space: SpacePCI, Base: 2, Size: 1, Class: Required, Owner: "virtio-console", Profiles: both, IRQ: -1,
		Why: "virtio-console (hvc0): the minimal profile's console, which survives the handoff"},
	{ID: VirtioBlock, Space: SpacePCI, Base: 3, Size: 4, Class: Required, Owner: "virtio-blk", Profiles: both, IRQ: -1,
		Why: "virtio-blk: up to four disks on raw image files"},
	{ID: VirtioNet, Space: SpacePCI, Base: 7, Size: 1, Class: Required, Owner: "virtio-net", Profiles: both, IRQ: -1,
		Why: "virtio-net: one NIC; disconnected during the build, on a tap after resume"},
	{ID: ISABridge, Space: SpacePCI, Base: 8, Size: 1, Class: Legacy, Owner: "piix3", Profiles: Firmware, IRQ: -1,
		Why: "PIIX3 ISA bridge: the BIOS programs its PCI interrupt routing; no device uses INTx"},
	{ID: PMFunction, Space: SpacePCI, Base: 9, Size: 1, Class: Legacy, Owner: "acpi-pm", Profiles: Firmware, IRQ: -1,
		Why: "PIIX4 power-management function: where firmware and the OS find the ACPI PM1 blocks (its PM base fixed at acpi-pm1-evt's); says SMM is set up, has no SMBus"},
}
