// Package kvm declares the KVM ioctls and structs the VMM uses, over
// golang.org/x/sys/unix. It is the only package of the VMM that uses
// package unsafe (see kvm_unsafe.go), which is why the raw reads and
// writes of the device goroutines (RawRead, RawWritev) are here too.
package kvm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DevicePath is the KVM device node.
const DevicePath = "/dev/kvm"

// APIVersion is the only KVM API version there is.
const APIVersion = 12

// ErrNoKVM reports that /dev/kvm cannot be used on this machine.
var ErrNoKVM = errors.New("KVM is not available")

// System is an open /dev/kvm.
type System struct {
	fd      int
	runSize int
}

// labHint tells a person without usable KVM what to do.
const labHint = "run inside the nested lab instead: go run ./cmd/bunkerlab run -- COMMAND"

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		hint := labHint
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: %s does not exist on this machine; %s", ErrNoKVM, DevicePath, hint)
		}
		return nil, fmt.Errorf("%w: open %s: %v; %s", ErrNoKVM, DevicePath, err, hint)
	}
	if err := checkBackend("/sys/module"); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: %v; %s", ErrNoKVM, err, labHint)
	}
	s := &System{fd: fd}
	v, err := ioctlPtr(fd, reqGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("%w: KVM API version %d, want %d", ErrNoKVM, v, APIVersion)
	}
	n, err := ioctlPtr(fd, reqGetVCPUMmapSize, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	s.runSize = int(n)
	return s, nil
}

// checkBackend refuses a /dev/kvm that cannot run unmodified guests.
// Some cloud VMs offer KVM through PVM (the kvm_pvm module), which runs
// guests without hardware virtualization and boots only kernels built as
// PVM guests; a stock kernel fails there in the decompressor.
// modules is the /sys/module directory.
func checkBackend(modules string) error {
	has := func(mod string) bool {
		_, err := os.Stat(filepath.Join(modules, mod))
		return err == nil
	}
	if has("kvm_pvm") && !has("kvm_amd") && !has("kvm_intel") {
		return errors.New("/dev/kvm is served by kvm_pvm, which cannot run unmodified guest kernels")
	}
	return nil
}

// Available reports whether /dev/kvm can be opened, and if not, why.
func Available() error {
	s, err := Open()
	if err != nil {
		return err
	}
	return s.Close()
}

// Close closes /dev/kvm.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 when absent.
func (s *System) CheckExtension(c Cap) int {
	r, err := ioctlPtr(s.fd, reqCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	var c cpuid2
	c.Nent = maxCPUIDEntries
	if _, err := ioctlVar(s.fd, reqGetSupportedCPUID, &c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return append([]CPUIDEntry(nil), c.Entries[:c.Nent]...), nil
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs a vCPU's state
// consists of.
func (s *System) MSRIndexList() ([]uint32, error) {
	var l msrList
	l.NMSRs = maxMSRs
	if _, err := ioctlVar(s.fd, reqGetMSRIndexList, &l); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return append([]uint32(nil), l.Indices[:l.NMSRs]...), nil
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	r, err := ioctlPtr(s.fd, reqCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(r), sys: s}, nil
}

// VM is a KVM virtual machine.
type VM struct {
	fd  int
	sys *System
}

// Close closes the VM's file descriptor. Close every VCPU first.
func (v *VM) Close() error { return unix.Close(v.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION on the VM: 0 when absent.
func (v *VM) CheckExtension(c Cap) int {
	r, err := ioctlPtr(v.fd, reqCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// SetUserMemoryRegion maps host memory mem at guest-physical gpa in slot.
// mem must stay mapped until the VM is closed.
func (v *VM) SetUserMemoryRegion(slot uint32, gpa uint64, mem []byte) error {
	return v.setMemoryRegion(slot, gpa, mem, 0)
}

// memReadonly is KVM_MEM_READONLY.
const memReadonly = 1 << 1

// SetReadOnlyMemoryRegion maps mem at gpa in slot for reading and
// executing only: a guest write to it exits as MMIO (KVM_CAP_READONLY_MEM).
// mem must stay mapped until the VM is closed.
func (v *VM) SetReadOnlyMemoryRegion(slot uint32, gpa uint64, mem []byte) error {
	return v.setMemoryRegion(slot, gpa, mem, memReadonly)
}

func (v *VM) setMemoryRegion(slot uint32, gpa uint64, mem []byte, flags uint32) error {
	r := userspaceMemoryRegion{Slot: slot, Flags: flags, GuestPhysAddr: gpa, MemorySize: uint64(len(mem)), UserspaceAddr: hostAddr(mem)}
	if err := ioctlStruct(v.fd, reqSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x (flags %#x): %w", slot, gpa, flags, err)
	}
	return nil
}

// SetTSSAddr sets the three-page region KVM uses for real-mode emulation
// on Intel.
func (v *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctlPtr(v.fd, reqSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	return nil
}

// SetIdentityMapAddr sets the page KVM uses for its identity map on Intel.
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	if err := ioctlStruct(v.fd, reqSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	return nil
}

// EnableCap enables a VM capability with its arguments.
func (v *VM) EnableCap(c Cap, args ...uint64) error {
	e := enableCap{Cap: uint32(c)}
	copy(e.Args[:], args)
	if err := ioctlStruct(v.fd, reqEnableCap, &e); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP %d: %w", c, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and local APICs.
func (v *VM) CreateIRQChip() error {
	if _, err := ioctlPtr(v.fd, reqCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel 8254 PIT.
func (v *VM) CreatePIT2(flags uint32) error {
	c := PITConfig{Flags: flags}
	if err := ioctlStruct(v.fd, reqCreatePIT2, &c); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of interrupt line (GSI) irq.
func (v *VM) IRQLine(irq uint32, high bool) error {
	l := irqLevel{IRQ: irq}
	if high {
		l.Level = 1
	}
	if err := ioctlStruct(v.fd, reqIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE %d: %w", irq, err)
	}
	return nil
}

// IRQChip returns the state of the in-kernel chip id (ChipPICMaster, ...).
func (v *VM) IRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	if err := ioctlStruct(v.fd, reqGetIRQChip, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_IRQCHIP %d: %w", id, err)
	}
	return c, nil
}

// SetIRQChip restores the state of an in-kernel chip.
func (v *VM) SetIRQChip(c IRQChip) error {
	if err := ioctlStruct(v.fd, reqSetIRQChip, &c); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP %d: %w", c.ChipID, err)
	}
	return nil
}

// PIT2 returns the in-kernel PIT's state.
func (v *VM) PIT2() (PITState2, error) {
	var s PITState2
	if err := ioctlStruct(v.fd, reqGetPIT2, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return s, nil
}

// SetPIT2 restores the in-kernel PIT's state.
func (v *VM) SetPIT2(s PITState2) error {
	if err := ioctlStruct(v.fd, reqSetPIT2, &s); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// Clock returns the kvmclock's value.
func (v *VM) Clock() (ClockData, error) {
	var c ClockData
	if err := ioctlStruct(v.fd, reqGetClock, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the kvmclock.
func (v *VM) SetClock(c ClockData) error {
	if err := ioctlStruct(v.fd, reqSetClock, &c); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its run structure.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	r, err := ioctlPtr(v.fd, reqCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	fd := int(r)
	run, err := unix.Mmap(fd, 0, v.sys.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map the run structure of vCPU %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: fd, run: run, sys: v.sys}, nil
}

// VCPU is one virtual CPU. Run and the state accessors must be called from
// the OS thread that runs it; Kick may be called from anywhere.
type VCPU struct {
	ID  int
	fd  int
	run []byte
	sys *System
}

// Close unmaps the run structure and closes the vCPU.
func (c *VCPU) Close() error {
	return errors.Join(unix.Munmap(c.run), unix.Close(c.fd))
}

// Run enters the guest until the next exit. It returns unix.EINTR, not
// retried, when a signal or SetImmediateExit interrupted it.
//
// KVM_RUN blocks, so it goes through syscall.Syscall: the runtime knows
// the thread is in the kernel, and sysmon takes its P back after 10 ms.
// With the vCPUs' Ps idle, sysmon sleeps until the next ordinary system
// call wakes it; the device goroutines' per-packet calls therefore go
// raw (RawRead, RawWritev, SignalMSI), see README, "Device benchmark".
// KVM_RUN itself as a raw call (keeping the P) was measured too and is
// not used: sysmon then preempts the vCPU goroutine with a signal every
// 10 ms, and with it the nested lab's L1 kernel panicked in all 4 runs of
// the integration tests (a panic the lab also shows without it, even in
// QEMU's process, but far less often; try it again on a real KVM host).
func (c *VCPU) Run() error {
	_, err := ioctlPtr(c.fd, reqRun, 0)
	return err
}

// SetImmediateExit makes the next (or current) KVM_RUN return EINTR at
// once. Safe from any thread.
func (c *VCPU) SetImmediateExit(on bool) { setImmediateExit(c.run, on) }

// vcpuIoctl issues a fixed-size vCPU ioctl and names it in the error.
func vcpuIoctl[T any](c *VCPU, name string, req uintptr, p *T) error {
	if err := ioctlStruct(c.fd, req, p); err != nil {
		return fmt.Errorf("%s on vCPU %d: %w", name, c.ID, err)
	}
	return nil
}

// Regs returns the general-purpose registers.
func (c *VCPU) Regs() (r Regs, err error) { return r, vcpuIoctl(c, "KVM_GET_REGS", reqGetRegs, &r) }

// SetRegs sets the general-purpose registers.
func (c *VCPU) SetRegs(r Regs) error { return vcpuIoctl(c, "KVM_SET_REGS", reqSetRegs, &r) }

// Sregs returns the special registers.
func (c *VCPU) Sregs() (s Sregs, err error) { return s, vcpuIoctl(c, "KVM_GET_SREGS", reqGetSregs, &s) }

// SetSregs sets the special registers.
func (c *VCPU) SetSregs(s Sregs) error { return vcpuIoctl(c, "KVM_SET_SREGS", reqSetSregs, &s) }

// FPU returns the legacy FPU state.
func (c *VCPU) FPU() (f FPU, err error) { return f, vcpuIoctl(c, "KVM_GET_FPU", reqGetFPU, &f) }

// SetFPU sets the legacy FPU state.
func (c *VCPU) SetFPU(f FPU) error { return vcpuIoctl(c, "KVM_SET_FPU", reqSetFPU, &f) }

// LAPIC returns the local APIC's registers.
func (c *VCPU) LAPIC() (l LAPICState, err error) {
	return l, vcpuIoctl(c, "KVM_GET_LAPIC", reqGetLAPIC, &l)
}

// SetLAPIC sets the local APIC's registers.
func (c *VCPU) SetLAPIC(l LAPICState) error { return vcpuIoctl(c, "KVM_SET_LAPIC", reqSetLAPIC, &l) }

// XCRs returns the extended control registers.
func (c *VCPU) XCRs() (x XCRs, err error) { return x, vcpuIoctl(c, "KVM_GET_XCRS", reqGetXCRs, &x) }

// SetXCRs sets the extended control registers.
func (c *VCPU) SetXCRs(x XCRs) error { return vcpuIoctl(c, "KVM_SET_XCRS", reqSetXCRs, &x) }

// VCPUEvents returns pending exceptions, interrupts and NMIs.
func (c *VCPU) VCPUEvents() (e VCPUEvents, err error) {
	return e, vcpuIoctl(c, "KVM_GET_VCPU_EVENTS", reqGetVCPUEvents, &e)
}

// SetVCPUEvents sets pending exceptions, interrupts and NMIs.
func (c *VCPU) SetVCPUEvents(e VCPUEvents) error {
	return vcpuIoctl(c, "KVM_SET_VCPU_EVENTS", reqSetVCPUEvents, &e)
}

// DebugRegs returns the debug registers.
func (c *VCPU) DebugRegs() (d DebugRegs, err error) {
	return d, vcpuIoctl(c, "KVM_GET_DEBUGREGS", reqGetDebugRegs, &d)
}

// SetDebugRegs sets the debug registers.
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	return vcpuIoctl(c, "KVM_SET_DEBUGREGS", reqSetDebugRegs, &d)
}

// MPState returns the multiprocessing state.
func (c *VCPU) MPState() (m MPState, err error) {
	return m, vcpuIoctl(c, "KVM_GET_MP_STATE", reqGetMPState, &m)
}

// SetMPState sets the multiprocessing state.
func (c *VCPU) SetMPState(m MPState) error {
	return vcpuIoctl(c, "KVM_SET_MP_STATE", reqSetMPState, &m)
}

// XSaveSize returns the size of the XSAVE area for XSave.
func (c *VCPU) XSaveSize() int {
	if n := c.sys.CheckExtension(CapXSave2); n > 4096 {
		return n
	}
	return 4096
}

// XSave returns the XSAVE area (KVM_GET_XSAVE2 when the area exceeds 4 KiB).
func (c *VCPU) XSave() (XSave, error) {
	n := c.XSaveSize()
	b := make([]byte, n)
	req := reqGetXSave
	if n > 4096 {
		req = reqGetXSave2
	}
	if err := ioctlBytes(c.fd, req, b); err != nil {
		return nil, fmt.Errorf("KVM_GET_XSAVE on vCPU %d: %w", c.ID, err)
	}
	return b, nil
}

// SetXSave sets the XSAVE area.
func (c *VCPU) SetXSave(x XSave) error {
	if len(x) < 4096 {
		return fmt.Errorf("KVM_SET_XSAVE on vCPU %d: area of %d bytes, need at least 4096", c.ID, len(x))
	}
	if err := ioctlBytes(c.fd, reqSetXSave, x); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE on vCPU %d: %w", c.ID, err)
	}
	return nil
}

// SetCPUID sets the CPUID the guest sees.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("KVM_SET_CPUID2 on vCPU %d: %d entries, at most %d", c.ID, len(entries), maxCPUIDEntries)
	}
	var c2 cpuid2
	c2.Nent = uint32(copy(c2.Entries[:], entries))
	if _, err := ioctlVar(c.fd, reqSetCPUID2, &c2); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 on vCPU %d: %w", c.ID, err)
	}
	return nil
}

// CPUID returns the CPUID the guest sees.
func (c *VCPU) CPUID() ([]CPUIDEntry, error) {
	var c2 cpuid2
	c2.Nent = maxCPUIDEntries
	if _, err := ioctlVar(c.fd, reqGetCPUID2, &c2); err != nil {
		return nil, fmt.Errorf("KVM_GET_CPUID2 on vCPU %d: %w", c.ID, err)
	}
	return append([]CPUIDEntry(nil), c2.Entries[:c2.Nent]...), nil
}

// MSRs reads the given MSRs.
func (c *VCPU) MSRs(indices []uint32) ([]MSREntry, error) {
	got, n, err := c.MSRsPartial(indices)
	if err != nil {
		return nil, err
	}
	if n != len(indices) {
		return nil, fmt.Errorf("KVM_GET_MSRS on vCPU %d: read %d of %d MSRs; MSR %#x failed", c.ID, n, len(indices), indices[n])
	}
	return got, nil
}

// MSRsPartial reads MSRs until KVM refuses one: it returns those read and
// their count; indices[n] is the refused one when n < len(indices).
func (c *VCPU) MSRsPartial(indices []uint32) ([]MSREntry, int, error) {
	if len(indices) > maxMSRs {
		return nil, 0, fmt.Errorf("KVM_GET_MSRS on vCPU %d: %d MSRs, at most %d", c.ID, len(indices), maxMSRs)
	}
	var m msrs
	m.NMSRs = uint32(len(indices))
	for i, idx := range indices {
		m.Entries[i].Index = idx
	}
	n, err := ioctlVar(c.fd, reqGetMSRs, &m)
	if err != nil {
		return nil, 0, fmt.Errorf("KVM_GET_MSRS on vCPU %d: %w", c.ID, err)
	}
	return append([]MSREntry(nil), m.Entries[:n]...), int(n), nil
}

// SetMSRs writes MSRs, and fails unless KVM applied every entry.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	if len(entries) > maxMSRs {
		return fmt.Errorf("KVM_SET_MSRS on vCPU %d: %d MSRs, at most %d", c.ID, len(entries), maxMSRs)
	}
	var m msrs
	m.NMSRs = uint32(copy(m.Entries[:], entries))
	n, err := ioctlVar(c.fd, reqSetMSRs, &m)
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS on vCPU %d: %w", c.ID, err)
	}
	if int(n) != len(entries) {
		return fmt.Errorf("KVM_SET_MSRS on vCPU %d: applied %d of %d MSRs; MSR %#x refused", c.ID, n, len(entries), entries[n].Index)
	}
	return nil
}

// TSCKHz returns the guest TSC frequency.
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctlPtr(c.fd, reqGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ on vCPU %d: %w", c.ID, err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the guest TSC frequency.
func (c *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctlPtr(c.fd, reqSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ on vCPU %d: %w", c.ID, err)
	}
	return nil
}

// EnableCap enables a vCPU capability with its arguments.
func (c *VCPU) EnableCap(cp Cap, args ...uint64) error {
	e := enableCap{Cap: uint32(cp)}
	copy(e.Args[:], args)
	return vcpuIoctl(c, fmt.Sprintf("KVM_ENABLE_CAP %d", cp), reqEnableCap, &e)
}

// KVMClockCtrl tells the guest's kvmclock that the vCPU was paused.
func (c *VCPU) KVMClockCtrl() error {
	if _, err := ioctlPtr(c.fd, reqKVMClockCtrl, 0); err != nil {
		return fmt.Errorf("KVM_KVMCLOCK_CTRL on vCPU %d: %w", c.ID, err)
	}
	return nil
}
