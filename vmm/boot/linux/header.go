// Package linux loads a Linux x86-64 bzImage into guest memory following the
// x86 boot protocol (Documentation/arch/x86/boot.rst) and describes the
// initial state of the boot vCPU for the kernel's 64-bit entry point.
//
// Only the boot CPU is set up here. Secondary CPUs need nothing from the
// loader: Linux starts them itself with INIT/SIPI IPIs through the in-kernel
// local APIC, and they run the kernel's real-mode trampoline. The machine
// only has to create them (in KVM's reset state) and let them wait for SIPI.
package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Offsets of setup header fields in the bzImage file, which are also their
// offsets in struct boot_params (boot.rst, "The Real-Mode Kernel Header").
const (
	offSetupSects      = 0x1f1
	offRootFlags       = 0x1f2
	offSyssize         = 0x1f4
	offVidMode         = 0x1fa
	offBootFlag        = 0x1fe
	offJump            = 0x200
	offHeaderMagic     = 0x202
	offVersion         = 0x206
	offKernelVersion   = 0x20e
	offTypeOfLoader    = 0x210
	offLoadFlags       = 0x211
	offCode32Start     = 0x214
	offRamdiskImage    = 0x218
	offRamdiskSize     = 0x21c
	offHeapEndPtr      = 0x224
	offCmdLinePtr      = 0x228
	offInitrdAddrMax   = 0x22c
	offKernelAlignment = 0x230
	offRelocatable     = 0x234
	offMinAlignment    = 0x235
	offXLoadFlags      = 0x236
	offCmdlineSize     = 0x238
	offSetupData       = 0x250
	offPrefAddress     = 0x258
	offInitSize        = 0x260

	// setupHeaderStart is where the setup header, and the part of it a
	// loader copies into boot_params, begins.
	setupHeaderStart = offSetupSects
	// setupHeaderLimit is where the header area of boot_params ends
	// (edd_mbr_sig_buffer follows at 0x290); the header can never extend
	// past it.
	setupHeaderLimit = 0x290
	// minHeaderEnd is the end of init_size, the last field protocol 2.12
	// defines that we read.
	minHeaderEnd = offInitSize + 4
)

// Magic values and flags of the setup header.
const (
	bootFlagMagic = 0xaa55
	headerMagic   = 0x53726448 // "HdrS"

	// MinProtocol is the oldest boot protocol accepted: 2.12 introduced
	// xloadflags and with it XLF_KERNEL_64, the 64-bit entry point at 0x200.
	MinProtocol = 0x020c

	LoadedHigh = 1 << 0 // loadflags: protected-mode code loads at 0x100000
	CanUseHeap = 1 << 7 // loadflags: heap_end_ptr is valid

	XLFKernel64           = 1 << 0 // xloadflags: 64-bit entry at +0x200
	XLFCanBeLoadedAbove4G = 1 << 1 // xloadflags: kernel, boot_params, cmdline, initrd may lie above 4 GiB

	// defaultSetupSects is what setup_sects == 0 means.
	defaultSetupSects = 4
	sectorSize        = 512

	// loaderTypeUndefined is type_of_loader for a loader without an
	// assigned ID.
	loaderTypeUndefined = 0xff
	// vidModeNormal is vid_mode "normal" (boot.rst, vga=normal).
	vidModeNormal = 0xffff
)

// Header is the parsed setup header of a bzImage.
type Header struct {
	SetupSects      int    // real value: 0 in the file means 4
	Syssize         uint32 // protected-mode code size in 16-byte paragraphs
	Version         uint16 // boot protocol, (major<<8)|minor
	LoadFlags       uint8
	XLoadFlags      uint16
	CmdlineSize     uint32 // longest command line, terminating NUL excluded
	InitrdAddrMax   uint32 // highest byte address the initrd may occupy
	KernelAlignment uint32
	Relocatable     bool
	MinAlignment    uint8
	PrefAddress     uint64
	InitSize        uint32 // linear memory needed from the runtime start
	KernelVersion   string // the image's version string, if it has one

	// HeaderEnd is the offset just past the setup header: 0x202 plus the
	// byte at 0x201 (the jump's displacement).
	HeaderEnd int
}

// ProtocolString returns the boot protocol version as "2.15".
func (h *Header) ProtocolString() string { return protocolString(h.Version) }

func protocolString(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xff) }

// KernelOffset is the file offset of the protected-mode kernel.
func (h *Header) KernelOffset() int64 { return int64(h.SetupSects+1) * sectorSize }

// KernelSize is the size in bytes of the protected-mode kernel.
func (h *Header) KernelSize() uint64 { return uint64(h.Syssize) * 16 }

// RuntimeStart returns where the kernel will decompress and run when its
// protected-mode code is loaded at loadAddr, by the algorithm the 64-bit
// entry uses (arch/x86/boot/compressed/head_64.S, startup_64): a
// relocatable kernel aligns the load address up to kernel_alignment and
// never runs below LOAD_PHYSICAL_ADDR, which is pref_address; other
// kernels run at pref_address. boot.rst defines init_size from this point.
func (h *Header) RuntimeStart(loadAddr uint64) uint64 {
	if !h.Relocatable {
		return h.PrefAddress
	}
	a := uint64(h.KernelAlignment)
	start := (loadAddr + a - 1) &^ (a - 1)
	if start < h.PrefAddress {
		start = h.PrefAddress
	}
	return start
}

// ErrNotBzImage is wrapped by the errors ParseHeader returns for images
// that are not a bzImage at all.
var ErrNotBzImage = errors.New("not a bzImage")

// ParseHeader reads and checks the setup header of the bzImage r. It accepts
// only kernels that can be started at their 64-bit entry point.
func ParseHeader(r io.ReaderAt) (*Header, error) {
	b := make([]byte, setupHeaderLimit)
	n, err := r.ReadAt(b, 0)
	if n < offHeaderMagic+4 {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("%w: file is only %d bytes, too short for a setup header", ErrNotBzImage, n)
		}
		return nil, fmt.Errorf("read kernel setup header: %w", err)
	}
	if n < len(b) && err != io.EOF && err != nil {
		return nil, fmt.Errorf("read kernel setup header: %w", err)
	}
	b = b[:n]
	le := binary.LittleEndian

	if m := le.Uint16(b[offBootFlag:]); m != bootFlagMagic {
		return nil, fmt.Errorf("%w: no boot sector magic 0xAA55 at 0x1FE (found %#04x)", ErrNotBzImage, m)
	}
	if le.Uint32(b[offHeaderMagic:]) != headerMagic {
		return nil, fmt.Errorf("%w: no HdrS signature at 0x202", ErrNotBzImage)
	}
	h := &Header{Version: le.Uint16(b[offVersion:])}
	if h.Version < MinProtocol {
		return nil, fmt.Errorf("boot protocol %s too old (need %s for the 64-bit entry point)", h.ProtocolString(), protocolString(MinProtocol))
	}
	if b[offJump] != 0xeb {
		return nil, fmt.Errorf("%w: no short jump at 0x200 (found %#02x), cannot size the setup header", ErrNotBzImage, b[offJump])
	}
	h.HeaderEnd = offHeaderMagic + int(b[offJump+1])
	if h.HeaderEnd < minHeaderEnd || h.HeaderEnd > setupHeaderLimit {
		return nil, fmt.Errorf("setup header ends at %#x; protocol %s needs it to reach %#x and it may not pass %#x",
			h.HeaderEnd, h.ProtocolString(), minHeaderEnd, setupHeaderLimit)
	}
	if len(b) < h.HeaderEnd {
		return nil, fmt.Errorf("%w: file is only %d bytes, the setup header ends at %#x", ErrNotBzImage, len(b), h.HeaderEnd)
	}

	h.SetupSects = int(b[offSetupSects])
	if h.SetupSects == 0 {
		h.SetupSects = defaultSetupSects
	}
	h.Syssize = le.Uint32(b[offSyssize:])
	h.LoadFlags = b[offLoadFlags]
	h.XLoadFlags = le.Uint16(b[offXLoadFlags:])
	h.CmdlineSize = le.Uint32(b[offCmdlineSize:])
	h.InitrdAddrMax = le.Uint32(b[offInitrdAddrMax:])
	h.KernelAlignment = le.Uint32(b[offKernelAlignment:])
	h.Relocatable = b[offRelocatable] != 0
	h.MinAlignment = b[offMinAlignment]
	h.PrefAddress = le.Uint64(b[offPrefAddress:])
	h.InitSize = le.Uint32(b[offInitSize:])

	if h.LoadFlags&LoadedHigh == 0 {
		return nil, fmt.Errorf("%w: loadflags %#02x lacks LOADED_HIGH (a zImage)", ErrNotBzImage, h.LoadFlags)
	}
	if h.XLoadFlags&XLFKernel64 == 0 {
		return nil, fmt.Errorf("kernel has no 64-bit entry point: xloadflags %#04x lacks XLF_KERNEL_64 (a 32-bit kernel?)", h.XLoadFlags)
	}
	if h.Syssize == 0 {
		return nil, errors.New("setup header gives syssize 0: no protected-mode kernel")
	}
	if h.CmdlineSize == 0 {
		return nil, errors.New("setup header gives cmdline_size 0")
	}
	if uint64(h.InitSize) < h.KernelSize() {
		return nil, fmt.Errorf("setup header gives init_size %#x, smaller than the %#x-byte kernel", h.InitSize, h.KernelSize())
	}
	if h.Relocatable {
		if a := h.KernelAlignment; a == 0 || a&(a-1) != 0 {
			return nil, fmt.Errorf("relocatable kernel has kernel_alignment %#x, not a power of two", a)
		}
	} else if h.PrefAddress == 0 {
		return nil, errors.New("non-relocatable kernel gives no pref_address")
	}
	h.KernelVersion = readVersion(r, b, h)
	return h, nil
}

// readVersion returns the NUL-terminated version string kernel_version
// points to, or "" if there is none.
func readVersion(r io.ReaderAt, b []byte, h *Header) string {
	off := int64(binary.LittleEndian.Uint16(b[offKernelVersion:]))
	if off == 0 {
		return ""
	}
	off += 0x200
	end := int64(h.SetupSects+1) * sectorSize
	if off >= end {
		return ""
	}
	s := make([]byte, min(256, end-off))
	n, _ := r.ReadAt(s, off)
	s = s[:n]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return string(s)
}
