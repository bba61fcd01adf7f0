package kvm

import (
	"fmt"
)

// MSR filter constants, from <asm/kvm.h>.
const (
	MSRFilterRead  = 1 << 0
	MSRFilterWrite = 1 << 1

	msrFilterDefaultDeny = 1 << 0
	msrFilterMaxRanges   = 16
	msrFilterMaxBitmap   = 0x600 // bytes per range

	// User-space MSR exit reasons for CapX86UserSpaceMSR.
	MSRExitInval   = 1 << 0
	MSRExitUnknown = 1 << 1
	MSRExitFilter  = 1 << 2
)

// MSRRange allows guest access to MSRs Base..Base+len(Allow)-1 where
// Allow[i] is true.
type MSRRange struct {
	Base  uint32
	Allow []bool
}

type msrFilterRange struct {
	Flags  uint32
	NMSRs  uint32
	Base   uint32
	_      uint32
	Bitmap *byte
}

type msrFilter struct {
	Flags  uint32
	_      uint32
	Ranges [msrFilterMaxRanges]msrFilterRange
}

// SetMSRFilter installs a deny-by-default MSR filter that allows guest
// reads and writes of exactly the MSRs the ranges allow. (KVM does not
// filter the x2APIC range 0x800-0x8ff.)
func (v *VM) SetMSRFilter(ranges []MSRRange) error {
	if len(ranges) > msrFilterMaxRanges {
		return fmt.Errorf("KVM_X86_SET_MSR_FILTER: %d ranges, at most %d", len(ranges), msrFilterMaxRanges)
	}
	if len(ranges) == 0 {
		// KVM refuses a deny-by-default filter without ranges; one range
		// allowing nothing means the same.
		ranges = []MSRRange{{Base: 0, Allow: []bool{false}}}
	}
	f := msrFilter{Flags: msrFilterDefaultDeny}
	bitmaps := make([][]byte, len(ranges))
	for i, r := range ranges {
		n := len(r.Allow)
		if n == 0 || (n+7)/8 > msrFilterMaxBitmap {
			return fmt.Errorf("KVM_X86_SET_MSR_FILTER: range at %#x has %d MSRs (1 to %d)", r.Base, n, msrFilterMaxBitmap*8)
		}
		bm := make([]byte, (n+7)/8)
		for j, ok := range r.Allow {
			if ok {
				bm[j/8] |= 1 << (j % 8)
			}
		}
		bitmaps[i] = bm
		f.Ranges[i] = msrFilterRange{Flags: MSRFilterRead | MSRFilterWrite, NMSRs: uint32(n), Base: r.Base, Bitmap: &bm[0]}
	}
	if err := ioctlStruct(v.fd, reqSetMSRFilter, &f); err != nil {
		return fmt.Errorf("KVM_X86_SET_MSR_FILTER: %w", err)
	}
	return nil
}

// MSI is struct kvm_msi.
type MSI struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	_         [12]uint8
}

// SignalMSI injects a message-signalled interrupt. It returns whether the
// interrupt was delivered (false if the guest had it blocked).
func (v *VM) SignalMSI(m MSI) (bool, error) {
	r, err := ioctlStructRaw(v.fd, reqSignalMSI, &m)
	if err != nil {
		return false, fmt.Errorf("KVM_SIGNAL_MSI: %w", err)
	}
	return r > 0, nil
}
