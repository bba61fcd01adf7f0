package kvm

import "fmt"

// ioeventfd is struct kvm_ioeventfd.
type ioeventfd struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]byte
}

// ioeventfdDeassign is KVM_IOEVENTFD_FLAG_DEASSIGN. Without
// KVM_IOEVENTFD_FLAG_PIO the address is an MMIO address.
const ioeventfdDeassign = 1 << 2

// AddMMIOEventFD makes a guest write of length bytes at MMIO address addr
// signal the eventfd fd inside KVM, without an exit to userspace; the
// write's value is dropped. Writes of other lengths exit as before.
func (v *VM) AddMMIOEventFD(addr uint64, length uint32, fd int) error {
	return v.ioeventfd(addr, length, fd, 0)
}

// RemoveMMIOEventFD undoes AddMMIOEventFD.
func (v *VM) RemoveMMIOEventFD(addr uint64, length uint32, fd int) error {
	return v.ioeventfd(addr, length, fd, ioeventfdDeassign)
}

func (v *VM) ioeventfd(addr uint64, length uint32, fd int, flags uint32) error {
	e := ioeventfd{Addr: addr, Len: length, FD: int32(fd), Flags: flags}
	if err := ioctlStruct(v.fd, reqIOEventFD, &e); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD at %#x (%d bytes, flags %#x): %w", addr, length, flags, err)
	}
	return nil
}
