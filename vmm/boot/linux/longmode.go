package linux

import (
	"encoding/binary"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Segment is one segment register as KVM's struct kvm_segment holds it:
// Limit is in bytes (already scaled when G is set), and each flag field is 0
// or 1 (Type is the 4-bit descriptor type, DPL 0 to 3).
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
}

// DTable is a descriptor-table register (GDTR, IDTR) as KVM's struct
// kvm_dtable holds it.
type DTable struct {
	Base  uint64
	Limit uint16
}

// Entry is the initial state of the boot vCPU. General-purpose registers
// not named here are zero.
type Entry struct {
	RIP, RSP, RSI, RFLAGS uint64

	CR0, CR3, CR4 uint64
	EFER          uint64

	GDT, IDT DTable

	CS, DS, ES, FS, GS, SS Segment
	// TR is a busy 64-bit TSS at base 0, as in KVM's reset state. VM entry
	// in long mode needs a usable busy TSS in TR; it has no descriptor in
	// the boot GDT and the kernel loads its own TR before it needs one.
	// LDTR is left as KVM resets it.
	TR Segment
}

// Control-register, EFER and RFLAGS bits used by the entry state.
const (
	CR0PE  = 1 << 0  // protected mode
	CR0ET  = 1 << 4  // extension type, hardwired to 1
	CR0PG  = 1 << 31 // paging
	CR4PAE = 1 << 5  // physical address extension, needed for long mode

	EFERLME = 1 << 8  // long mode enable
	EFERLMA = 1 << 10 // long mode active

	RFLAGSReserved = 1 << 1 // bit 1 always reads as 1; IF is clear
)

// Boot GDT selectors. The 64-bit boot protocol requires __BOOT_CS (0x10)
// and __BOOT_DS (0x18): flat 4 GiB segments, code execute/read, data
// read/write.
const (
	BootCS = 0x10
	BootDS = 0x18
)

// Page-table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7 // page-directory entry maps a 2 MiB page

	pageDirCount = 4       // page directories at memory.PageDirs
	hugePage     = 2 << 20 // 2 MiB
	// IdentityMapped is how much of guest-physical memory the boot page
	// tables identity-map: 0 up to 4 GiB.
	IdentityMapped = pageDirCount * 512 * hugePage
)

var (
	bootCode = Segment{Limit: 0xffffffff, Selector: BootCS, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}  // execute/read, accessed
	bootData = Segment{Limit: 0xffffffff, Selector: BootDS, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1} // read/write, accessed
	bootTR   = Segment{Limit: 0xffff, Type: 0xb, Present: 1}                                          // busy 64-bit TSS
)

// gdtEntries is the boot GDT: two null descriptors (selectors 0x00 and
// 0x08), then code at 0x10 and data at 0x18. It fills the 32 bytes between
// memory.BootGDT and memory.BootIDT.
const gdtEntries = 4

// SetupLongMode writes the boot GDT, an empty IDT and identity-mapping page
// tables for 0-4 GiB into guest memory and returns the vCPU state that
// enters 64-bit mode with them. The caller sets RIP and RSI.
func SetupLongMode(mem *memory.Guest) (Entry, error) {
	if gdtEntries*8 > memory.BootIDT-memory.BootGDT {
		panic("boot GDT overlaps the boot IDT")
	}
	gdt := make([]byte, gdtEntries*8)
	binary.LittleEndian.PutUint64(gdt[BootCS:], EncodeDescriptor(bootCode))
	binary.LittleEndian.PutUint64(gdt[BootDS:], EncodeDescriptor(bootData))
	if err := mem.WriteAt(gdt, memory.BootGDT); err != nil {
		return Entry{}, fmt.Errorf("write boot GDT: %w", err)
	}
	// One zero 16-byte gate: any exception before the kernel loads its
	// own IDT escalates to a triple fault, which KVM reports as a
	// shutdown exit.
	if err := mem.WriteAt(make([]byte, 16), memory.BootIDT); err != nil {
		return Entry{}, fmt.Errorf("write boot IDT: %w", err)
	}
	if err := writePageTables(mem); err != nil {
		return Entry{}, err
	}
	return Entry{
		RSP:    memory.BootStack,
		RFLAGS: RFLAGSReserved,
		CR0:    CR0PE | CR0ET | CR0PG,
		CR3:    memory.PML4,
		CR4:    CR4PAE,
		EFER:   EFERLME | EFERLMA,
		GDT:    DTable{Base: memory.BootGDT, Limit: gdtEntries*8 - 1},
		IDT:    DTable{Base: memory.BootIDT, Limit: 16 - 1},
		CS:     bootCode,
		DS:     bootData,
		ES:     bootData,
		FS:     bootData,
		GS:     bootData,
		SS:     bootData,
		TR:     bootTR,
	}, nil
}

// writePageTables builds PML4 -> PDPT -> 4 page directories of 2 MiB pages
// identity-mapping [0, 4 GiB).
func writePageTables(mem *memory.Guest) error {
	le := binary.LittleEndian
	pml4 := make([]byte, memory.PageSize)
	le.PutUint64(pml4, memory.PDPT|ptePresent|pteWrite)
	pdpt := make([]byte, memory.PageSize)
	pds := make([]byte, pageDirCount*memory.PageSize)
	for i := range pageDirCount {
		le.PutUint64(pdpt[i*8:], uint64(memory.PageDirs+i*memory.PageSize)|ptePresent|pteWrite)
	}
	for i := range pageDirCount * 512 {
		le.PutUint64(pds[i*8:], uint64(i)*hugePage|ptePresent|pteWrite|ptePS)
	}
	for _, w := range []struct {
		what string
		b    []byte
		gpa  uint64
	}{{"PML4", pml4, memory.PML4}, {"PDPT", pdpt, memory.PDPT}, {"page directories", pds, memory.PageDirs}} {
		if err := mem.WriteAt(w.b, w.gpa); err != nil {
			return fmt.Errorf("write boot %s: %w", w.what, err)
		}
	}
	return nil
}

// EncodeDescriptor returns the 8-byte GDT descriptor for a code or data
// segment s.
func EncodeDescriptor(s Segment) uint64 {
	limit := s.Limit
	if s.G != 0 {
		limit >>= 12
	}
	d := uint64(limit&0xffff) | uint64(limit>>16&0xf)<<48
	d |= (s.Base & 0xffffff) << 16
	d |= (s.Base >> 24 & 0xff) << 56
	d |= uint64(s.Type&0xf) << 40
	d |= uint64(s.S&1) << 44
	d |= uint64(s.DPL&3) << 45
	d |= uint64(s.Present&1) << 47
	d |= uint64(s.AVL&1) << 52
	d |= uint64(s.L&1) << 53
	d |= uint64(s.DB&1) << 54
	d |= uint64(s.G&1) << 55
	return d
}

// DecodeDescriptor returns the segment an 8-byte code or data descriptor
// describes, with the given selector.
func DecodeDescriptor(d uint64, selector uint16) Segment {
	s := Segment{
		Base:     d>>16&0xffffff | (d>>56&0xff)<<24,
		Limit:    uint32(d&0xffff | (d>>48&0xf)<<16),
		Selector: selector,
		Type:     uint8(d >> 40 & 0xf),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		AVL:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        uint8(d >> 55 & 1),
	}
	if s.G != 0 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	return s
}
