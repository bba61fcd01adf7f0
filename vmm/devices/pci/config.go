// Package pci emulates PCI configuration space for the required devices:
// configuration mechanism #1 (an address register and a data window, at
// the ports the inventory gives them), bus 0 with up to 32 single-function
// devices, and type-0 headers whose every guest write goes through a
// per-bit write mask, so that read-only fields stay as the device set
// them and base address registers stay aligned to their size.
//
// The host decodes memory BARs only inside one window (the inventory's
// PCI window) and delivers MSI-X messages only into the local APIC's
// interrupt window; the machine attaches the virtio devices
// (vmm/machine/pci.go) in both profiles.
package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

// ConfigSize is the size of a function's configuration space (PCI, not
// PCIe extended).
const ConfigSize = 256

// Type-0 header offsets.
const (
	OffVendor       = 0x00
	OffDevice       = 0x02
	OffCommand      = 0x04
	OffStatus       = 0x06
	OffRevision     = 0x08
	OffClass        = 0x09 // programming interface, subclass, class: 3 bytes
	OffHeaderType   = 0x0e
	OffBAR0         = 0x10
	OffSubsysVendor = 0x2c
	OffSubsys       = 0x2e
	OffCapPtr       = 0x34
	OffIntLine      = 0x3c
	OffIntPin       = 0x3d

	capStart = 0x40 // capabilities live after the header
)

// Capability IDs.
const (
	CapVendor = 0x09 // vendor-specific: virtio's capabilities, which repeat
	CapMSIX   = 0x11
)

// Command and status register bits.
const (
	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandMaster      = 1 << 2
	CommandIntxDisable = 1 << 10
	StatusCapList      = 1 << 4

	commandWritable = CommandIO | CommandMemory | CommandMaster | CommandIntxDisable
)

// BAR describes a base address register: Size 0 means unused.
type BAR struct {
	Size         uint64 // a power of two: at least 16 for memory, 4 for I/O
	IO           bool
	Is64         bool // memory only; uses this slot and the next
	Prefetchable bool
}

// Header is the identity of a type-0 function.
type Header struct {
	Vendor, Device             uint16
	Revision                   uint8
	Class                      uint32 // class<<16 | subclass<<8 | programming interface
	SubsystemVendor, Subsystem uint16
	IntPin                     uint8 // 0: none, 1: INTA#
}

// Capability is one entry of the capability list: its ID and the bytes
// after the ID and next-pointer, with a mask of the bits the guest may
// write (nil: none).
type Capability struct {
	ID       uint8
	Body     []byte
	Writable []byte
}

// Endpoint is a type-0 function. Guest writes are masked bit by bit;
// status bits are write-one-to-clear.
type Endpoint struct {
	mu    sync.Mutex
	cfg   [ConfigSize]byte
	wmask [ConfigSize]byte
	w1c   [ConfigSize]byte
	bars  [6]BAR
	caps  map[uint8]uint8 // capability ID -> offset

	// OnBAR, if set, is called (without the endpoint's lock) after the
	// guest moves BAR i; OnCommand after it changes the command register.
	OnBAR     func(i int, addr uint64)
	OnCommand func(cmd uint16)
	// OnWrite, if set, is called after every guest write, with its
	// offset and size (MSI-X re-reads its message control through it).
	OnWrite func(off uint8, n int)
}

// NewEndpoint lays out a type-0 header with bars and caps. It checks the
// BARs (power-of-two sizes, 64-bit BARs not in the last slot and with the
// next slot free) and that the capabilities fit in the space after the
// header.
func NewEndpoint(h Header, bars [6]BAR, caps []Capability) (*Endpoint, error) {
	e := &Endpoint{bars: bars, caps: map[uint8]uint8{}}
	le := binary.LittleEndian
	le.PutUint16(e.cfg[OffVendor:], h.Vendor)
	le.PutUint16(e.cfg[OffDevice:], h.Device)
	e.cfg[OffRevision] = h.Revision
	e.cfg[OffClass], e.cfg[OffClass+1], e.cfg[OffClass+2] = byte(h.Class), byte(h.Class>>8), byte(h.Class>>16)
	le.PutUint16(e.cfg[OffSubsysVendor:], h.SubsystemVendor)
	le.PutUint16(e.cfg[OffSubsys:], h.Subsystem)
	if h.IntPin > 4 {
		return nil, fmt.Errorf("pci: interrupt pin %d, want 0 to 4", h.IntPin)
	}
	e.cfg[OffIntPin] = h.IntPin
	le.PutUint16(e.wmask[OffCommand:], commandWritable)
	e.wmask[OffIntLine] = 0xff
	// Status: the error bits (15:11 and 8) are write-one-to-clear.
	le.PutUint16(e.w1c[OffStatus:], 0xf900)
	for i := 0; i < len(bars); i++ {
		b := bars[i]
		if b.Size == 0 {
			continue
		}
		switch {
		case bits.OnesCount64(b.Size) != 1:
			return nil, fmt.Errorf("pci: BAR %d size %#x is not a power of two", i, b.Size)
		case b.IO && (b.Size < 4 || b.Size > 256 || b.Is64 || b.Prefetchable):
			return nil, fmt.Errorf("pci: I/O BAR %d: size %#x (want 4 to 256), not 64-bit, not prefetchable", i, b.Size)
		case !b.IO && b.Size < 16:
			return nil, fmt.Errorf("pci: memory BAR %d size %#x is under 16 bytes", i, b.Size)
		case !b.IO && !b.Is64 && b.Size > 1<<31:
			return nil, fmt.Errorf("pci: 32-bit memory BAR %d size %#x is over 2 GiB", i, b.Size)
		case b.Is64 && (i == 5 || bars[i+1].Size != 0):
			return nil, fmt.Errorf("pci: 64-bit BAR %d needs slot %d free", i, i+1)
		}
		off := OffBAR0 + 4*i
		mask := ^(b.Size - 1)
		var flags uint32
		switch {
		case b.IO:
			flags = 1
			le.PutUint32(e.wmask[off:], uint32(mask)&^3)
		default:
			if b.Is64 {
				flags |= 2 << 1
			}
			if b.Prefetchable {
				flags |= 1 << 3
			}
			le.PutUint32(e.wmask[off:], uint32(mask)&^0xf)
			if b.Is64 {
				le.PutUint32(e.wmask[off+4:], uint32(mask>>32))
				i++ // the upper half
			}
		}
		le.PutUint32(e.cfg[off:], flags)
	}
	next := capStart
	prev := OffCapPtr
	for _, c := range caps {
		n := 2 + len(c.Body)
		if c.Writable != nil && len(c.Writable) != len(c.Body) {
			return nil, fmt.Errorf("pci: capability %#x: write mask of %d bytes for a body of %d", c.ID, len(c.Writable), len(c.Body))
		}
		if next+n > ConfigSize {
			return nil, errors.New("pci: capabilities do not fit in configuration space")
		}
		if _, dup := e.caps[c.ID]; dup && c.ID != CapVendor {
			return nil, fmt.Errorf("pci: capability %#x twice", c.ID)
		}
		if _, dup := e.caps[c.ID]; !dup {
			e.caps[c.ID] = uint8(next)
		}
		e.cfg[prev] = uint8(next)
		e.cfg[next] = c.ID
		copy(e.cfg[next+2:], c.Body)
		copy(e.wmask[next+2:], c.Writable)
		prev = next + 1
		next = (next + n + 3) &^ 3
	}
	if len(caps) > 0 {
		le.PutUint16(e.cfg[OffStatus:], StatusCapList)
	}
	return e, nil
}

// Register is a device-specific register in the area after the
// standard header: its offset, its value at reset and a mask of the bits
// the guest may write (nil: none).
type Register struct {
	Off      uint8
	Value    []byte
	Writable []byte
}

// AddRegisters lays out device-specific registers, as a chipset function
// has them instead of capabilities: an endpoint has one or the other. Each
// must lie in the device area, clear of the others.
func (e *Endpoint) AddRegisters(rs ...Register) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.caps) > 0 {
		return errors.New("pci: device registers on a function with capabilities")
	}
	used := [ConfigSize]bool{}
	for _, r := range rs {
		if r.Writable != nil && len(r.Writable) != len(r.Value) {
			return fmt.Errorf("pci: register %#x: write mask of %d bytes for %d", r.Off, len(r.Writable), len(r.Value))
		}
		if int(r.Off) < capStart || len(r.Value) == 0 || int(r.Off)+len(r.Value) > ConfigSize {
			return fmt.Errorf("pci: register %#x+%d is outside the device area %#x-%#x", r.Off, len(r.Value), capStart, ConfigSize-1)
		}
		for i := range r.Value {
			if used[int(r.Off)+i] {
				return fmt.Errorf("pci: register %#x+%d overlaps another register or the capabilities", r.Off, len(r.Value))
			}
			used[int(r.Off)+i] = true
		}
		copy(e.cfg[r.Off:], r.Value)
		copy(e.wmask[r.Off:], r.Writable)
	}
	return nil
}

// ReadConfig reads configuration space.
func (e *Endpoint) ReadConfig(off uint8, data []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !aligned(off, len(data)) {
		fill(data)
		return
	}
	copy(data, e.cfg[off:])
}

// WriteConfig writes configuration space through the write masks.
func (e *Endpoint) WriteConfig(off uint8, data []byte) {
	if !aligned(off, len(data)) {
		return
	}
	e.mu.Lock()
	oldCmd := e.command()
	oldBARs := e.barAddrs()
	for i, v := range data {
		o := int(off) + i
		e.cfg[o] = e.cfg[o]&^e.wmask[o] | v&e.wmask[o]
		e.cfg[o] &^= v & e.w1c[o]
	}
	cmd, bars := e.command(), e.barAddrs()
	onBAR, onCmd, onWrite := e.OnBAR, e.OnCommand, e.OnWrite
	e.mu.Unlock()
	if onWrite != nil {
		onWrite(off, len(data))
	}
	for i := range bars {
		if bars[i] != oldBARs[i] && onBAR != nil {
			onBAR(i, bars[i])
		}
	}
	if cmd != oldCmd && onCmd != nil {
		onCmd(cmd)
	}
}

func (e *Endpoint) command() uint16 { return binary.LittleEndian.Uint16(e.cfg[OffCommand:]) }

// barAddrs returns each BAR's address (0 for unused slots and upper
// halves).
func (e *Endpoint) barAddrs() [6]uint64 {
	var a [6]uint64
	for i := 0; i < 6; i++ {
		b := e.bars[i]
		if b.Size == 0 {
			continue
		}
		lo := uint64(binary.LittleEndian.Uint32(e.cfg[OffBAR0+4*i:]))
		if b.IO {
			a[i] = lo &^ 3
			continue
		}
		a[i] = lo &^ 0xf
		if b.Is64 {
			a[i] |= uint64(binary.LittleEndian.Uint32(e.cfg[OffBAR0+4*(i+1):])) << 32
			i++
		}
	}
	return a
}

type barSpan struct{ addr, size uint64 }

// memoryBARs returns the address and size of each memory BAR (zero for
// I/O BARs, unused slots and upper halves).
func (e *Endpoint) memoryBARs() [6]barSpan {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out [6]barSpan
	addrs := e.barAddrs()
	for i, b := range e.bars {
		if b.Size != 0 && !b.IO {
			out[i] = barSpan{addrs[i], b.Size}
		}
	}
	return out
}

// place sets memory BAR i to addr and turns memory decoding on.
func (e *Endpoint) place(i int, addr uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i < 0 || i >= len(e.bars) || e.bars[i].Size == 0 || e.bars[i].IO {
		return fmt.Errorf("BAR %d is not a memory BAR", i)
	}
	b := e.bars[i]
	if addr%b.Size != 0 || !b.Is64 && addr+b.Size > 1<<32 {
		return fmt.Errorf("BAR %d of %#x bytes cannot sit at %#x", i, b.Size, addr)
	}
	le := binary.LittleEndian
	off := OffBAR0 + 4*i
	le.PutUint32(e.cfg[off:], le.Uint32(e.cfg[off:])&0xf|uint32(addr))
	if b.Is64 {
		le.PutUint32(e.cfg[off+4:], uint32(addr>>32))
	}
	le.PutUint16(e.cfg[OffCommand:], e.command()|CommandMemory)
	return nil
}

// Config returns a copy of the configuration space, for a snapshot.
func (e *Endpoint) Config() []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]byte(nil), e.cfg[:]...)
}

// SetConfig restores configuration space saved by Config. Only bits the
// guest may write may differ from this endpoint's: a saved space from a
// different device (identity, BAR types, capability layout) is refused.
// The host's Window must be told (Host.Remap) afterwards.
func (e *Endpoint) SetConfig(saved []byte) error {
	if len(saved) != ConfigSize {
		return fmt.Errorf("pci: saved configuration space is %d bytes, want %d", len(saved), ConfigSize)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, v := range saved {
		if (v^e.cfg[i])&^e.wmask[i] != 0 {
			return fmt.Errorf("pci: saved configuration space differs from this device's at read-only byte %#x (%#02x, want %#02x under mask %#02x)", i, v, e.cfg[i], ^e.wmask[i])
		}
	}
	copy(e.cfg[:], saved)
	return nil
}

// BARAddress returns BAR i's current address.
func (e *Endpoint) BARAddress(i int) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.barAddrs()[i]
}

// Command returns the command register.
func (e *Endpoint) Command() uint16 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.command()
}

// Capability returns the offset of the first capability with id.
func (e *Endpoint) Capability(id uint8) (uint8, bool) {
	off, ok := e.caps[id]
	return off, ok
}

func aligned(off uint8, n int) bool {
	return (n == 1 || n == 2 || n == 4) && int(off)%n == 0 && int(off)+n <= ConfigSize
}

func fill(data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}
