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
	if n := unsafe.Sizeof(*arg); n != sizeField(req) {
		panic(fmt.Sprintf("kvm: ioctl %#x with a %d-byte argument", req, n))
	}
	return ioctlPtr(fd, req, uintptr(unsafe.Pointer(arg)))
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
