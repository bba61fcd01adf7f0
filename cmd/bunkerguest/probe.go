package main

// "bunkerguest probe" maps the interface a guest can reach, from inside the
// guest and without asking the VMM: every I/O port, a set of MSR ranges and
// the hypervisor CPUID leaves.
//
// Ports. Each of the 65536 ports is read once, one byte at a time, through
// /dev/port (a 1-byte pread at offset=port: the kernel does one inb). Port
// I/O from user space with iopl/ioperm is not used: it raised #GP in the
// nested lab. A port is live if it reads as anything but 0xFF, which is what
// a read of an unclaimed port returns on a PC (the bus floats high) and what
// KVM VMMs answer. A live port that happens to read 0xFF is missed; that is
// the price of a read-only probe. Free-running counters do so now and then
// (the ACPI PM timer at 0x608-0x60b on pc and q35, the PIT's counters), so
// counts can differ by one or two between runs.
//
// Reading is not free of side effects. Among the devices a PC guest has:
//   - i8042 0x60 pops a byte from the keyboard controller's output buffer;
//   - 16550 UART: the receive buffer (base+0) pops a byte of console input
//     (typed text is lost if it arrives during the scan), IIR (base+2)
//     clears a pending transmitter-empty interrupt, LSR and MSR (base+5,
//     base+6) clear their error and delta bits;
//   - i8254 PIT counters 0x40-0x42 advance the low/high byte flip-flop of a
//     counter being read; i8237 DMA 0x00-0x0f toggles its flip-flop;
//   - i8259 PIC 0x20/0xa0 return IRR or ISR, whichever OCW3 selected;
//   - CMOS 0x71 reads the register last selected at 0x70; if that is
//     register C, pending RTC interrupt flags are cleared;
//   - fw_cfg 0x511 advances the read offset of the selected item; legacy
//     virtio ISR registers clear the interrupt status they report;
//   - VGA 0x3da resets the attribute controller flip-flop.
//
// None of these is written. The kernel drivers of the default guest
// (serial console, kvmclock rather than the PIT) recover from them. To keep
// the console we report on intact, the probe waits until the console has sent
// everything queued before it scans (so that no transmit interrupt is in
// flight when IIR is read) and prints nothing until the scans are done; the
// host must not type while it runs.
//
// MSRs. The ranges in msrRanges are read on CPU 0 through /dev/cpu/0/msr
// (8-byte pread at offset=index; the kernel does rdmsr with an exception
// fixup). An MSR is readable if the read succeeds; a #GP comes back as EIO.
// The stock Debian kernel has the msr driver as a module: the default guest
// image carries it as /lib/modules/<release>/msr.ko.xz (not *.ko, so u-root's
// init does not load it at boot), and the probe loads it if
// /dev/cpu/0/msr is missing. Reading an MSR has no architectural side
// effects, but the values of some (TSC, APERF/MPERF) change from read to read.
//
// CPUID. Leaf 1 ECX bit 31 (the hypervisor bit), and every base
// 0x40000000, 0x40000100, ... 0x4000ff00 that answers with a printable
// vendor signature (the scan Linux's hypervisor_cpuid_base does). KVM's base
// may move up when it also offers Hyper-V's leaves at 0x40000000. For the
// base with KVM's signature, base+1 EAX is decoded into KVM PV feature names
// (Linux arch/x86/include/uapi/asm/kvm_para.h) and EDX is reported as KVM's
// hints.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ProbeMarker starts the one line "bunkerguest probe --json" prints, so that
// a host can find the JSON in a console stream that also carries echo,
// prompts and kernel messages. A kernel message ("[   22.899959] ...\n") can
// still land inside the line, when the kernel logs while it is being sent: a
// host removes such messages before it decodes the line.
const ProbeMarker = "BUNKERGUEST-PROBE "

const (
	portDevice = "/dev/port"
	msrDevice  = "/dev/cpu/0/msr"
	numPorts   = 1 << 16
	floatByte  = 0xFF // what an unclaimed port reads as
)

// span is an inclusive range of port numbers or MSR indexes.
type span struct {
	First uint32 `json:"first"`
	Last  uint32 `json:"last"`
}

func (s span) len() int { return int(s.Last-s.First) + 1 }

// msrRanges are the MSR ranges the probe reads: the architectural and
// model-specific low range, the Hyper-V/KVM synthetic range, KVM's own PV
// MSRs ("KVM" in ASCII), the AMD64 and the AMD-specific ranges.
var msrRanges = []span{
	{0x00000000, 0x00001FFF},
	{0x40000000, 0x400001FF},
	{0x4B564D00, 0x4B564DFF},
	{0xC0000000, 0xC0001FFF},
	{0xC0010000, 0xC0011FFF},
}

// x2apicMSRs is the x2APIC register block, which the local APIC, not the
// VMM's own code, answers in a KVM guest with an in-kernel APIC.
var x2apicMSRs = span{0x800, 0x8FF}

type portValue struct {
	Port  uint16 `json:"port"`
	Value uint8  `json:"value"`
}

type msrValue struct {
	Index uint32 `json:"index"`
	Value uint64 `json:"value"`
}

// hvLeaf is one hypervisor CPUID base that answered with a signature.
type hvLeaf struct {
	Base      uint32 `json:"base"`
	MaxLeaf   uint32 `json:"max_leaf"`  // EAX of the base leaf
	Signature string `json:"signature"` // EBX, ECX, EDX, trailing NULs removed
}

type cpuidHV struct {
	HypervisorBit bool     `json:"hypervisor_bit"` // CPUID.1:ECX[31]
	Leaves        []hvLeaf `json:"leaves"`
	KVMBase       uint32   `json:"kvm_base"`     // base of "KVMKVMKVM", or 0
	KVMFeatures   uint32   `json:"kvm_features"` // EAX of KVMBase+1
	KVMHints      uint32   `json:"kvm_hints"`    // EDX of KVMBase+1
}

// probeResult is the JSON object "bunkerguest probe --json" prints.
type probeResult struct {
	Ports      []portValue `json:"ports"`       // the live ports
	PortRanges []span      `json:"port_ranges"` // the same, compressed
	LivePorts  int         `json:"live_ports"`
	PortError  string      `json:"port_error,omitempty"`

	MSRs                      []msrValue `json:"msrs"`       // the readable MSRs
	MSRRanges                 []span     `json:"msr_ranges"` // the same, compressed
	MSRsScanned               []span     `json:"msrs_scanned"`
	ReadableMSRs              int        `json:"readable_msrs"`
	ReadableMSRsOutsideX2APIC int        `json:"readable_msrs_outside_x2apic"`
	MSRError                  string     `json:"msr_error,omitempty"`

	CPUIDHV    cpuidHV  `json:"cpuid_hv"`
	PVFeatures []string `json:"pv_features"`

	PortsMillis int64 `json:"ports_ms"`
	MSRsMillis  int64 `json:"msrs_ms"`
	TotalMillis int64 `json:"total_ms"`
}

// probe runs "bunkerguest probe [--json] [--msr-module FILE]".
func probe(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "")
	module := fs.String("msr-module", "", "")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errUsage
	}
	if *module == "" {
		*module = defaultMSRModule()
	}
	waitConsoleDrained(stdout)
	r := scanAll(*module)
	var err error
	if *asJSON {
		err = writeProbeJSON(stdout, r)
	} else {
		err = writeProbeText(stdout, r)
	}
	if err != nil {
		return err
	}
	return errors.Join(msgErr(r.PortError), msgErr(r.MSRError))
}

func msgErr(s string) error {
	if s == "" {
		return nil
	}
	return errors.New(s)
}

// scanAll probes ports, MSRs and CPUID on CPU 0. A scan that cannot run is
// reported in the result's error fields; the others still run.
func scanAll(msrModule string) probeResult {
	start := time.Now()
	// One thread, on CPU 0: /dev/cpu/0/msr then reads on the CPU it runs
	// on, without an IPI, and CPUID describes CPU 0 like the MSRs do.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu0 unix.CPUSet
	cpu0.Set(0)
	pinErr := unix.SchedSetaffinity(0, &cpu0)

	r := probeResult{Ports: []portValue{}, MSRs: []msrValue{}, MSRsScanned: msrRanges}
	t := time.Now()
	if err := withDevice(portDevice, 1, 4, "", func(f *os.File) error {
		var err error
		r.Ports, err = scanPorts(f)
		return err
	}); err != nil {
		r.PortError = "ports: " + err.Error()
	}
	r.PortsMillis = time.Since(t).Milliseconds()

	t = time.Now()
	if err := withDevice(msrDevice, 202, 0, msrModule, func(f *os.File) error {
		var err error
		r.MSRs, err = scanMSRs(f, msrRanges)
		return err
	}); err != nil {
		r.MSRError = "msrs: " + err.Error()
		if pinErr != nil {
			r.MSRError += fmt.Sprintf(" (pin to CPU 0: %v)", pinErr)
		}
	}
	r.MSRsMillis = time.Since(t).Milliseconds()

	r.CPUIDHV = scanCPUID(cpuid)
	r.PVFeatures = pvFeatureNames(r.CPUIDHV.KVMFeatures)
	r.summarize()
	r.TotalMillis = time.Since(start).Milliseconds()
	return r
}

// summarize fills in the counts and ranges from the lists. Lists are never
// nil, so that JSON has [] rather than null.
func (r *probeResult) summarize() {
	r.Ports = nonNil(r.Ports)
	r.MSRs = nonNil(r.MSRs)
	r.MSRsScanned = nonNil(r.MSRsScanned)
	r.PVFeatures = nonNil(r.PVFeatures)
	r.CPUIDHV.Leaves = nonNil(r.CPUIDHV.Leaves)
	ports := make([]uint32, len(r.Ports))
	for i, p := range r.Ports {
		ports[i] = uint32(p.Port)
	}
	r.PortRanges = compress(ports)
	r.LivePorts = len(r.Ports)
	msrs := make([]uint32, len(r.MSRs))
	r.ReadableMSRsOutsideX2APIC = 0
	for i, m := range r.MSRs {
		msrs[i] = m.Index
		if m.Index < x2apicMSRs.First || m.Index > x2apicMSRs.Last {
			r.ReadableMSRsOutsideX2APIC++
		}
	}
	r.MSRRanges = compress(msrs)
	r.ReadableMSRs = len(r.MSRs)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// compress turns ascending numbers into the fewest inclusive ranges.
func compress(xs []uint32) []span {
	spans := []span{}
	for _, x := range xs {
		if n := len(spans); n > 0 && spans[n-1].Last != ^uint32(0) && spans[n-1].Last+1 == x {
			spans[n-1].Last = x
			continue
		}
		spans = append(spans, span{x, x})
	}
	return spans
}

// scanPorts reads every port from dev (/dev/port) and returns those that do
// not read as 0xFF.
func scanPorts(dev io.ReaderAt) ([]portValue, error) {
	live := []portValue{}
	var b [1]byte
	for port := range numPorts {
		if _, err := dev.ReadAt(b[:], int64(port)); err != nil {
			return live, fmt.Errorf("read port %#x: %w", port, err)
		}
		if b[0] != floatByte {
			live = append(live, portValue{uint16(port), b[0]})
		}
	}
	return live, nil
}

// scanMSRs reads the MSRs in ranges from dev (/dev/cpu/N/msr) and returns
// those that could be read. EIO is the guest's #GP on RDMSR; any other error
// ends the scan.
func scanMSRs(dev io.ReaderAt, ranges []span) ([]msrValue, error) {
	readable := []msrValue{}
	var b [8]byte
	for _, s := range ranges {
		for i := uint64(s.First); i <= uint64(s.Last); i++ {
			_, err := dev.ReadAt(b[:], int64(i))
			if errors.Is(err, unix.EIO) {
				continue
			}
			if err != nil {
				return readable, fmt.Errorf("read MSR %#x: %w", i, err)
			}
			v := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
				uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
			readable = append(readable, msrValue{uint32(i), v})
		}
	}
	return readable, nil
}

// kvmSignature is what KVM puts in EBX, ECX, EDX of its base leaf.
const kvmSignature = "KVMKVMKVM"

// scanCPUID reads the hypervisor bit and the hypervisor leaves with cpuid.
func scanCPUID(cpuid func(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)) cpuidHV {
	var hv cpuidHV
	if maxBasic, _, _, _ := cpuid(0, 0); maxBasic >= 1 {
		_, _, ecx, _ := cpuid(1, 0)
		hv.HypervisorBit = ecx&(1<<31) != 0
	}
	hv.Leaves = []hvLeaf{}
	for base := uint32(0x40000000); base < 0x40010000; base += 0x100 {
		eax, ebx, ecx, edx := cpuid(base, 0)
		sig, ok := signature(ebx, ecx, edx)
		// Linux takes a max leaf of 0 from KVM to mean base+1.
		if !ok || (eax != 0 && (eax < base || eax > base+0xFF)) {
			continue
		}
		hv.Leaves = append(hv.Leaves, hvLeaf{base, eax, sig})
		if sig == kvmSignature && hv.KVMBase == 0 {
			hv.KVMBase = base
			if eax == 0 || eax >= base+1 {
				hv.KVMFeatures, _, _, hv.KVMHints = cpuid(base+1, 0)
			}
		}
	}
	return hv
}

// signature decodes a 12-byte vendor signature from three registers, low
// byte first. It is valid if it is printable ASCII followed by NULs.
func signature(regs ...uint32) (string, bool) {
	var b []byte
	for _, r := range regs {
		b = append(b, byte(r), byte(r>>8), byte(r>>16), byte(r>>24))
	}
	s := strings.TrimRight(string(b), "\x00")
	if s == "" {
		return "", false
	}
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e {
			return "", false
		}
	}
	return s, true
}

// kvmFeatureNames names the bits of CPUID 0x40000001 EAX as Linux's
// arch/x86/include/uapi/asm/kvm_para.h does (KVM_FEATURE_ prefix dropped).
// Bit 8 has never been assigned.
var kvmFeatureNames = map[uint]string{
	0:  "CLOCKSOURCE",
	1:  "NOP_IO_DELAY",
	2:  "MMU_OP",
	3:  "CLOCKSOURCE2",
	4:  "ASYNC_PF",
	5:  "STEAL_TIME",
	6:  "PV_EOI",
	7:  "PV_UNHALT",
	9:  "PV_TLB_FLUSH",
	10: "ASYNC_PF_VMEXIT",
	11: "PV_SEND_IPI",
	12: "POLL_CONTROL",
	13: "PV_SCHED_YIELD",
	14: "ASYNC_PF_INT",
	15: "MSI_EXT_DEST_ID",
	16: "HC_MAP_GPA_RANGE",
	17: "MIGRATION_CONTROL",
	24: "CLOCKSOURCE_STABLE_BIT",
}

// pvFeatureNames returns the names of the bits set in KVM's feature EAX, in
// bit order; a bit without a name is "bitN".
func pvFeatureNames(eax uint32) []string {
	names := []string{}
	for bit := range uint(32) {
		if eax&(1<<bit) == 0 {
			continue
		}
		name, ok := kvmFeatureNames[bit]
		if !ok {
			name = fmt.Sprintf("bit%d", bit)
		}
		names = append(names, name)
	}
	return names
}

// writeProbeJSON prints the result as one line: ProbeMarker and a JSON
// object.
func writeProbeJSON(w io.Writer, r probeResult) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s%s\n", ProbeMarker, b)
	return err
}

// writeProbeText prints a summary for a person: the live port ranges with
// their values, the readable MSR ranges, the hypervisor leaves and the time.
func writeProbeText(w io.Writer, r probeResult) error {
	var b strings.Builder
	if r.PortError != "" {
		fmt.Fprintf(&b, "%s\n", r.PortError)
	}
	fmt.Fprintf(&b, "live ports: %d of %d, in %d ranges (%d ms)\n", r.LivePorts, numPorts, len(r.PortRanges), r.PortsMillis)
	values := make(map[uint32]uint8, len(r.Ports))
	for _, p := range r.Ports {
		values[uint32(p.Port)] = p.Value
	}
	for _, s := range r.PortRanges {
		fmt.Fprintf(&b, "  %s ", formatSpan(s, 4))
		const shown = 16
		for p := s.First; p <= s.Last && p < s.First+shown; p++ {
			fmt.Fprintf(&b, " %02x", values[p])
		}
		if s.len() > shown {
			fmt.Fprintf(&b, " ... (%d ports)", s.len())
		}
		b.WriteByte('\n')
	}

	if r.MSRError != "" {
		fmt.Fprintf(&b, "%s\n", r.MSRError)
	}
	scanned := 0
	for _, s := range r.MSRsScanned {
		scanned += s.len()
	}
	fmt.Fprintf(&b, "readable MSRs: %d of %d read, %d outside x2APIC %#x-%#x, in %d ranges (%d ms)\n",
		r.ReadableMSRs, scanned, r.ReadableMSRsOutsideX2APIC, x2apicMSRs.First, x2apicMSRs.Last, len(r.MSRRanges), r.MSRsMillis)
	for _, s := range r.MSRRanges {
		fmt.Fprintf(&b, "  %s  (%d)\n", formatSpan(s, 8), s.len())
	}

	hv := r.CPUIDHV
	fmt.Fprintf(&b, "hypervisor bit: %v\n", hv.HypervisorBit)
	for _, l := range hv.Leaves {
		fmt.Fprintf(&b, "  cpuid %#x: %q, max leaf %#x\n", l.Base, l.Signature, l.MaxLeaf)
	}
	if hv.KVMBase != 0 {
		fmt.Fprintf(&b, "KVM PV features (cpuid %#x eax=%#x): %s\n", hv.KVMBase+1, hv.KVMFeatures, strings.Join(r.PVFeatures, " "))
		fmt.Fprintf(&b, "KVM hints (edx): %#x\n", hv.KVMHints)
	}
	fmt.Fprintf(&b, "time: %d ms\n", r.TotalMillis)
	_, err := io.WriteString(w, b.String())
	return err
}

func formatSpan(s span, digits int) string {
	if s.First == s.Last {
		return fmt.Sprintf("0x%0*x%*s", digits, s.First, digits+1, "")
	}
	return fmt.Sprintf("0x%0*x-%0*x", digits, s.First, digits, s.Last)
}

// defaultMSRModule is where the default guest image keeps the msr module
// for the running kernel.
func defaultMSRModule() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return ""
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]), "msr.ko.xz")
}

// withDevice opens the character device path (major:minor) read-only and
// calls use with it. If path is missing and module is set, it loads that
// kernel module first; if the device node is still missing (no devtmpfs on
// /dev), it makes it.
func withDevice(path string, major, minor uint32, module string, use func(*os.File) error) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if module != "" {
			if err := loadModule(module); err != nil {
				return err
			}
		}
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			dev := int(unix.Mkdev(major, minor))
			if err := unix.Mknod(path, unix.S_IFCHR|0o600, dev); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("mknod %s c %d %d: %w", path, major, minor, err)
			}
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return use(f)
}

// loadModule loads a kernel module file; a compressed one (.ko.xz and the
// like) is decompressed by the kernel (CONFIG_MODULE_DECOMPRESS). A module
// already loaded is fine.
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// waitConsoleDrained waits until a terminal w has sent all queued output
// (tcdrain), so that the port scan's read of a UART's IIR cannot swallow a
// transmit interrupt the driver still waits for. Anything else returns at
// once.
func waitConsoleDrained(w io.Writer) {
	if f, ok := w.(*os.File); ok {
		unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1) // ENOTTY if not a terminal
	}
}
