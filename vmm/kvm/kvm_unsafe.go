package kvm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds every use of package unsafe in the VMM.

// ioctlPtr issues an ioctl whose argument is a pointer.
//
// Sound because of //go:uintptrescapes: a uintptr(unsafe.Pointer(p))
// conversion written in the call expression keeps p's referent alive and
// unmoved until the call returns, and KVM does not retain the pointer.
//
//go:uintptrescapes
func ioctlPtr(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlStruct passes a pointer to a fixed-size struct whose size the
// request code encodes.
//
// Sound: T is one of the mirrors in types.go, laid out like its C struct,
// and the size check below refuses a request whose encoded size differs
// from T's, so KVM never reads or writes past *arg.
//
// Pointers inside *arg (the bitmaps of kvm_msr_filter) are typed Go
// pointers, so the collector keeps their referents alive while *arg is;
// KVM copies what they point to during the call.
func ioctlStruct[T any](fd int, req uintptr, arg *T) error {
	_, err := ioctlStructRet(fd, req, arg)
	return err
}

// ioctlStructRet is ioctlStruct for requests whose return value matters.
func ioctlStructRet[T any](fd int, req uintptr, arg *T) (uintptr, error) {
	checkSize(req, arg)
	return ioctlPtr(fd, req, uintptr(unsafe.Pointer(arg)))
}

// checkSize refuses a request whose encoded argument size differs from
// T's, so that KVM never reads or writes past *arg.
func checkSize[T any](req uintptr, arg *T) {
	if n := unsafe.Sizeof(*arg); n != sizeField(req) {
		panic(fmt.Sprintf("kvm: ioctl %#x with a %d-byte argument", req, n))
	}
}

// ioctlStructRaw is ioctlStructRet for requests that never block, issued
// as a raw system call (see rawSyscall).
//
// Sound: as ioctlStruct.
func ioctlStructRaw[T any](fd int, req uintptr, arg *T) (uintptr, error) {
	checkSize(req, arg)
	return rawSyscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(arg)))
}

// ioctlVar passes a pointer to a struct that ends in a variable-length
// array (kvm_msrs, kvm_cpuid2, kvm_msr_list); the request code encodes only
// the header's size.
//
// Sound: T is a mirror whose trailing array holds the maximum number of
// entries, and callers set the header's count to at most that maximum, so
// KVM stays inside *arg.
func ioctlVar[T any](fd int, req uintptr, arg *T) (uintptr, error) {
	return ioctlPtr(fd, req, uintptr(unsafe.Pointer(arg)))
}

// ioctlBytes passes a byte buffer (kvm_xsave with KVM_GET_XSAVE2, whose
// size KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reported).
//
// Sound: callers size b to what KVM reported it will touch, and b is
// non-empty, so &b[0] is valid for len(b) bytes.
func ioctlBytes(fd int, req uintptr, b []byte) error {
	if len(b) == 0 {
		panic("kvm: ioctl with an empty buffer")
	}
	_, err := ioctlPtr(fd, req, uintptr(unsafe.Pointer(&b[0])))
	return err
}

// hostAddr returns the host virtual address of mem for
// KVM_SET_USER_MEMORY_REGION.
//
// Sound: mem is an mmap'd mapping (guest RAM), which the Go garbage
// collector neither moves nor frees; the caller keeps it mapped until the
// VM is closed.
func hostAddr(mem []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
}

// immediateExit returns the kvm_run.immediate_exit byte's containing
// 32-bit word, for atomic updates from another thread.
//
// Sound: run is the page-aligned mmap of struct kvm_run; bytes 0-3 hold
// request_interrupt_window, immediate_exit and padding, so the word is
// aligned, in bounds, and its other bytes are never written concurrently by
// this process except through these atomics. KVM reads the byte on entry to
// KVM_RUN.
func immediateExitWord(run []byte) *uint32 {
	return (*uint32)(unsafe.Pointer(&run[0]))
}

func setImmediateExit(run []byte, on bool) {
	const bit = 1 << 8 // byte 1 of the little-endian word
	if on {
		atomic.OrUint32(immediateExitWord(run), bit)
	} else {
		atomic.AndUint32(immediateExitWord(run), ^uint32(bit))
	}
}

// MapFilePrivate maps len(dst) bytes of fd from offset off over dst,
// copy-on-write (MAP_PRIVATE|MAP_FIXED): guest memory restored from a
// snapshot blob shares the page cache's pages until the guest writes them.
// dst must lie inside a mapping the caller made with unix.Mmap (guest
// RAM) and keeps until the VM is closed; memory.Guest is the only caller.
//
// Sound: MAP_FIXED replaces pages of an existing mmap'd range in place, so
// the range stays mapped, readable and writable at the same address and
// length and no Go pointer is invalidated; the Go heap is not involved
// because dst comes from mmap, which the caller guarantees; the checks
// below keep the range page-aligned and non-empty, and the kernel refuses
// a file shorter than the range only when it is touched (SIGBUS), which is
// why callers check the file's size first.
func MapFilePrivate(dst []byte, fd int, off int64) error {
	page := uintptr(unix.Getpagesize())
	if len(dst) == 0 || uintptr(len(dst))%page != 0 || uintptr(unsafe.Pointer(&dst[0]))%page != 0 || off < 0 || uintptr(off)%page != 0 {
		return fmt.Errorf("map file: destination of %d bytes or offset %d is empty or not page-aligned", len(dst), off)
	}
	addr := unsafe.Pointer(&dst[0])
	got, err := unix.MmapPtr(fd, off, addr, uintptr(len(dst)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("map file over guest memory: %w", err)
	}
	if got != addr {
		return fmt.Errorf("map file over guest memory: mapped at %p, not %p", got, addr)
	}
	return nil
}

// rawSyscall is ioctlPtr's twin for calls that never block: it does not
// tell the Go runtime the thread is in the kernel (unix.RawSyscall), so
// the goroutine keeps its P and the runtime's sysmon thread is not woken
// (entering an ordinary system call wakes a sysmon asleep because every P
// was idle, and a woken sysmon polls every 20 µs for a while).
//
// Sound for the same reason as ioctlPtr: //go:uintptrescapes keeps the
// referents of pointer arguments converted in the call expression alive
// and unmoved until it returns. Callers pass only calls that do not
// block (reads and writes of non-blocking descriptors, KVM_SIGNAL_MSI),
// so a thread holds its P for the copy only.
//
//go:uintptrescapes
func rawSyscall(trap, a1, a2, a3 uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.RawSyscall(trap, a1, a2, a3)
		switch errno {
		case 0:
			return r, nil
		case unix.EINTR:
			continue
		}
		return r, errno
	}
}

// RawRead reads from fd into b with a raw system call (see rawSyscall),
// retrying when a signal interrupts it. fd must be non-blocking: the
// caller waits for it to become readable on EAGAIN, through the poller
// (ReadPolled does both).
//
// Sound: &b[0] is valid for len(b) bytes, and read(2) writes at most
// that many.
func RawRead(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := rawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// RawWritev writes bufs to fd in one writev(2) with a raw system call
// (see rawSyscall), retrying when a signal interrupts it. fd must be
// non-blocking, and bufs hold at most IOV_MAX non-empty buffers.
//
// Sound: every iovec points at the first byte of a non-empty buffer and
// carries its length, and the iovec array, a Go slice whose elements hold
// typed pointers, keeps the buffers alive while the call uses it; writev
// only reads them.
func RawWritev(fd int, bufs [][]byte) (int, error) {
	iov := make([]unix.Iovec, 0, len(bufs))
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	if len(iov) == 0 {
		return 0, nil
	}
	n, err := rawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if err != nil {
		return 0, err
	}
	return int(n), nil
}
