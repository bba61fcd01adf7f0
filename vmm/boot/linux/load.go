package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Offsets in struct boot_params of the fields outside the setup header
// (Documentation/arch/x86/zero-page.rst).
const (
	bpAcpiRsdpAddr    = 0x070
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8
	bpSentinel        = 0x1ef
	bpE820Table       = 0x2d0

	bootParamsSize = 0x1000
	e820EntrySize  = 20
	// MaxE820 is how many e820 entries boot_params holds
	// (E820_MAX_ENTRIES_ZEROPAGE).
	MaxE820 = 128
)

// Params is what Load puts into guest memory.
type Params struct {
	Kernel io.ReaderAt // the bzImage, as shipped

	Initrd     io.ReaderAt // nil for no initrd
	InitrdSize int64

	Cmdline string
	E820    []memory.E820Entry // the guest's memory map, at most MaxE820 entries
	RSDP    uint64             // guest-physical ACPI RSDP, 0 if none
}

// Loaded describes a loaded kernel.
type Loaded struct {
	Entry  Entry // initial state of the boot vCPU
	Header *Header

	// Footprint is the memory the kernel may use before it reads the
	// memory map: from memory.KernelStart, where its protected-mode code
	// is loaded, to the end of init_size past its runtime start.
	Footprint memory.Region
	// Initrd is where the initrd was placed; zero if there is none.
	Initrd memory.Region
}

// Load loads the bzImage, command line and initrd described by p into mem,
// writes boot_params at memory.ZeroPage and the long-mode page tables and
// GDT, and returns the state in which to start the boot vCPU.
func Load(mem *memory.Guest, p Params) (*Loaded, error) {
	if p.Kernel == nil {
		return nil, errors.New("no kernel image")
	}
	h, err := ParseHeader(p.Kernel)
	if err != nil {
		return nil, err
	}
	if len(p.E820) == 0 {
		return nil, errors.New("no e820 memory map")
	}
	if len(p.E820) > MaxE820 {
		return nil, fmt.Errorf("e820 map has %d entries; boot_params holds at most %d", len(p.E820), MaxE820)
	}
	regions, _ := mem.Regions()
	lowEnd := regions[0].End()

	// The kernel's footprint until it reads the e820 map.
	runtime := h.RuntimeStart(memory.KernelStart)
	footEnd := max(runtime+uint64(h.InitSize), memory.KernelStart+h.KernelSize())
	if footEnd > lowEnd {
		return nil, fmt.Errorf("kernel needs RAM up to %#x (runtime start %#x + init_size %#x), but RAM below 4 GiB ends at %#x: give the guest at least %d MiB",
			footEnd, runtime, h.InitSize, lowEnd, (footEnd+(1<<20)-1)>>20)
	}
	foot := memory.Region{GPA: memory.KernelStart, Size: footEnd - memory.KernelStart}
	if !inRAM(p.E820, foot) {
		return nil, fmt.Errorf("kernel footprint %#x-%#x is not within one RAM entry of the e820 map", foot.GPA, foot.End()-1)
	}

	cmdline, err := checkCmdline(p.Cmdline, h)
	if err != nil {
		return nil, err
	}

	// Protected-mode kernel. Bytes past syssize (a signed image's
	// signature) are not part of it.
	dst, err := mem.Slice(memory.KernelStart, h.KernelSize())
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if n, err := p.Kernel.ReadAt(dst, h.KernelOffset()); n < len(dst) {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("kernel image truncated: syssize promises %d bytes of kernel at offset %#x, the file has %d", len(dst), h.KernelOffset(), n)
		}
		return nil, fmt.Errorf("read kernel: %w", err)
	}

	var initrd memory.Region
	if p.Initrd != nil {
		if initrd, err = placeInitrd(h, p.InitrdSize, footEnd, lowEnd); err != nil {
			return nil, err
		}
		if !inRAM(p.E820, initrd) {
			return nil, fmt.Errorf("initrd at %#x-%#x is not within one RAM entry of the e820 map", initrd.GPA, initrd.End()-1)
		}
		dst, err := mem.Slice(initrd.GPA, initrd.Size)
		if err != nil {
			return nil, fmt.Errorf("initrd: %w", err)
		}
		if n, err := p.Initrd.ReadAt(dst, 0); n < len(dst) {
			if err == nil || err == io.EOF {
				return nil, fmt.Errorf("initrd is %d bytes, not the %d given", n, p.InitrdSize)
			}
			return nil, fmt.Errorf("read initrd: %w", err)
		}
	}

	if err := mem.WriteAt(cmdline, memory.Cmdline); err != nil {
		return nil, fmt.Errorf("write command line: %w", err)
	}
	bp, err := bootParams(p.Kernel, h, p, initrd)
	if err != nil {
		return nil, err
	}
	if err := mem.WriteAt(bp, memory.ZeroPage); err != nil {
		return nil, fmt.Errorf("write boot_params: %w", err)
	}

	entry, err := SetupLongMode(mem)
	if err != nil {
		return nil, err
	}
	// The 64-bit entry point is 0x200 past the start of the loaded
	// protected-mode kernel (boot.rst, "64-bit Boot Protocol").
	entry.RIP = memory.KernelStart + 0x200
	entry.RSI = memory.ZeroPage
	return &Loaded{Entry: entry, Header: h, Footprint: foot, Initrd: initrd}, nil
}

// checkCmdline returns s NUL-terminated, or an error if the kernel or our
// buffer cannot take it.
func checkCmdline(s string, h *Header) ([]byte, error) {
	limit := min(uint64(h.CmdlineSize), memory.CmdlineMax-1)
	if uint64(len(s)) > limit {
		return nil, fmt.Errorf("kernel command line is %d bytes; this kernel accepts at most %d", len(s), limit)
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return nil, fmt.Errorf("kernel command line has a NUL byte at offset %d", i)
	}
	return append([]byte(s), 0), nil
}

// placeInitrd puts an initrd of size bytes as high as it may go in low RAM:
// below the end of the first RAM region and the kernel's initrd ceiling,
// above the kernel's footprint, 4 KiB aligned.
func placeInitrd(h *Header, size int64, footEnd, lowEnd uint64) (memory.Region, error) {
	if size <= 0 {
		return memory.Region{}, fmt.Errorf("initrd size %d: an initrd must not be empty", size)
	}
	ceiling := uint64(h.InitrdAddrMax) + 1
	if h.XLoadFlags&XLFCanBeLoadedAbove4G != 0 {
		ceiling = memory.PCIHoleEnd
	}
	top := min(ceiling, lowEnd)
	top &^= memory.PageSize - 1
	sz := uint64(size)
	if sz > top || (top-sz)&^(memory.PageSize-1) < footEnd {
		room := uint64(0)
		if top > footEnd {
			room = top - footEnd
		}
		return memory.Region{}, fmt.Errorf("initrd is %d bytes (%d MiB) but only %d bytes (%d MiB) are free between the kernel's footprint end %#x and %#x: give the guest more memory or use a smaller initrd",
			sz, sz>>20, room, room>>20, footEnd, top)
	}
	return memory.Region{GPA: (top - sz) &^ (memory.PageSize - 1), Size: sz}, nil
}

// inRAM reports whether r lies within one RAM entry of the e820 map.
func inRAM(e820 []memory.E820Entry, r memory.Region) bool {
	for _, e := range e820 {
		if e.Type == memory.E820RAM && r.GPA >= e.Addr && r.End() <= e.Addr+e.Size {
			return true
		}
	}
	return false
}

// bootParams returns the 4 KiB boot_params ("zero page"): zeroes, the
// setup header copied from the image, and the fields a loader fills in.
func bootParams(kernel io.ReaderAt, h *Header, p Params, initrd memory.Region) ([]byte, error) {
	le := binary.LittleEndian
	bp := make([]byte, bootParamsSize)
	hdr := bp[setupHeaderStart:h.HeaderEnd]
	if n, err := kernel.ReadAt(hdr, setupHeaderStart); n < len(hdr) {
		return nil, fmt.Errorf("read setup header: %w", err)
	}

	// Setup header fields a loader writes (boot.rst).
	le.PutUint16(bp[offVidMode:], vidModeNormal)
	bp[offTypeOfLoader] = loaderTypeUndefined
	// We start the kernel at its 64-bit entry, so its real-mode setup
	// code, the only reader of heap_end_ptr, never runs: CAN_USE_HEAP
	// stays clear. LOADED_HIGH comes from the image.
	bp[offLoadFlags] &^= CanUseHeap
	le.PutUint16(bp[offHeapEndPtr:], 0)
	le.PutUint32(bp[offCmdLinePtr:], uint32(memory.Cmdline))
	le.PutUint32(bp[bpExtCmdLinePtr:], uint32(uint64(memory.Cmdline)>>32))
	le.PutUint32(bp[offRamdiskImage:], uint32(initrd.GPA))
	le.PutUint32(bp[offRamdiskSize:], uint32(initrd.Size))
	le.PutUint32(bp[bpExtRamdiskImage:], uint32(initrd.GPA>>32))
	le.PutUint32(bp[bpExtRamdiskSize:], uint32(initrd.Size>>32))

	// Fields outside the header (zero-page.rst).
	le.PutUint64(bp[bpAcpiRsdpAddr:], p.RSDP)
	bp[bpE820Entries] = uint8(len(p.E820))
	for i, e := range p.E820 {
		o := bpE820Table + i*e820EntrySize
		le.PutUint64(bp[o:], e.Addr)
		le.PutUint64(bp[o+8:], e.Size)
		le.PutUint32(bp[o+16:], uint32(e.Type))
	}
	// The sentinel at 0x1ef lies before the header and stays 0, telling
	// the kernel this loader zeroed boot_params and copied the header.
	return bp, nil
}
