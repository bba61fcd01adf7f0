package kvm

import (
	"encoding/binary"
	"fmt"
)

// ExitReason is kvm_run.exit_reason.
type ExitReason uint32

// Exit reasons, from <linux/kvm.h>.
const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitNMI           ExitReason = 16
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
	ExitIOAPICEOI     ExitReason = 26
	ExitX86RDMSR      ExitReason = 29
	ExitX86WRMSR      ExitReason = 30
)

var exitNames = map[ExitReason]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO", ExitHypercall: "HYPERCALL",
	ExitDebug: "DEBUG", ExitHLT: "HLT", ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR", ExitNMI: "NMI",
	ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT", ExitIOAPICEOI: "IOAPIC_EOI",
	ExitX86RDMSR: "X86_RDMSR", ExitX86WRMSR: "X86_WRMSR",
}

func (r ExitReason) String() string {
	if n, ok := exitNames[r]; ok {
		return "KVM_EXIT_" + n
	}
	return fmt.Sprintf("KVM_EXIT(%d)", uint32(r))
}

// System event types for ExitSystemEvent.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// Offsets into struct kvm_run.
const (
	runExitReason = 8
	runUnion      = 32
)

var le = binary.LittleEndian

// ExitReason returns the reason of the last exit.
func (c *VCPU) ExitReason() ExitReason { return ExitReason(le.Uint32(c.run[runExitReason:])) }

// IOExit is the port I/O exit the guest is stopped at.
type IOExit struct {
	Out  bool
	Port uint16
	Size int    // 1, 2 or 4
	Data []byte // Count*Size bytes inside the run structure
}

// IO decodes an ExitIO. For string I/O (rep ins/outs), Data holds every
// element in order; write the results of reads into it.
func (c *VCPU) IO() (IOExit, error) {
	u := c.run[runUnion:]
	size := int(u[1])
	count := int(le.Uint32(u[4:]))
	off := le.Uint64(u[8:])
	if size != 1 && size != 2 && size != 4 || count < 1 || off > uint64(len(c.run)) || uint64(size*count) > uint64(len(c.run))-off {
		return IOExit{}, fmt.Errorf("KVM_EXIT_IO with size %d, count %d at offset %d: malformed", size, count, off)
	}
	return IOExit{Out: u[0] == 1, Port: le.Uint16(u[2:]), Size: size, Data: c.run[off : off+uint64(size*count)]}, nil
}

// MMIOExit is the MMIO exit the guest is stopped at.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte // len bytes inside the run structure
}

// MMIO decodes an ExitMMIO; write the result of a read into Data.
func (c *VCPU) MMIO() (MMIOExit, error) {
	u := c.run[runUnion:]
	n := le.Uint32(u[16:])
	if n == 0 || n > 8 {
		return MMIOExit{}, fmt.Errorf("KVM_EXIT_MMIO of %d bytes: malformed", n)
	}
	return MMIOExit{Addr: le.Uint64(u), Data: u[8 : 8+n], Write: u[20] != 0}, nil
}

// SystemEvent returns the type of an ExitSystemEvent.
func (c *VCPU) SystemEvent() uint32 { return le.Uint32(c.run[runUnion:]) }

// InternalError returns the suberror of an ExitInternalError and the
// data KVM attached to it.
func (c *VCPU) InternalError() (suberror uint32, data []uint64) {
	u := c.run[runUnion:]
	n := min(le.Uint32(u[4:]), 16)
	for i := range n {
		data = append(data, le.Uint64(u[8+8*i:]))
	}
	return le.Uint32(u), data
}

// FailEntryReason returns the hardware reason of an ExitFailEntry.
func (c *VCPU) FailEntryReason() uint64 { return le.Uint64(c.run[runUnion:]) }

// MSRExit is a userspace MSR exit (ExitX86RDMSR or ExitX86WRMSR).
type MSRExit struct {
	Index  uint32
	Reason uint32
	Data   uint64
}

// MSR decodes an MSR exit.
func (c *VCPU) MSR() MSRExit {
	u := c.run[runUnion:]
	return MSRExit{Reason: le.Uint32(u[8:]), Index: le.Uint32(u[12:]), Data: le.Uint64(u[16:])}
}

// CompleteMSR answers an MSR exit: fail raises #GP in the guest; data is
// the value of a read.
func (c *VCPU) CompleteMSR(data uint64, fail bool) {
	u := c.run[runUnion:]
	u[0] = 0
	if fail {
		u[0] = 1
	}
	le.PutUint64(u[16:], data)
}

// EOIVector returns the vector of an ExitIOAPICEOI.
func (c *VCPU) EOIVector() uint8 { return c.run[runUnion] }
