package pci

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
)

// Slots is the number of device numbers on bus 0.
const Slots = 32

// Host is configuration mechanism #1 for bus 0: the guest writes an
// address (enable bit, bus, device, function, register) to the address
// register and reads or writes the selected dword through the data
// window. Functions other than 0, buses other than 0, empty slots and
// accesses with the enable bit clear read as all ones and ignore writes,
// as an absent device does.
type Host struct {
	mu    sync.Mutex
	addr  uint32
	slots [Slots]*Endpoint
	bars  [Slots]BARHandler

	window Window
}

// BARHandler serves guest accesses to a function's memory BARs: off is
// relative to BAR bar's base, and len(data) is 1, 2, 4 or 8.
type BARHandler interface {
	ReadBAR(bar int, off uint64, data []byte)
	WriteBAR(bar int, off uint64, data []byte)
}

// Address bits of the address register.
const (
	addrEnable   = 1 << 31
	addrBusShift = 16
	addrDevShift = 11
	addrFnShift  = 8
	addrRegMask  = 0xfc
)

// NewHost returns a host bridge with no functions; attach the bridge's
// own function at slot 0. Memory BARs are decoded only inside the window
// [base, base+size), which the inventory gives; log receives the BAR
// placements that are refused.
func NewHost(base, size uint64, log func(error)) *Host {
	h := &Host{}
	h.window = Window{host: h, base: base, size: size, log: log}
	return h
}

// Attach puts e at device number slot of bus 0; bars, if not nil, serves
// its memory BARs.
func (h *Host) Attach(slot int, e *Endpoint, bars BARHandler) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if slot < 0 || slot >= Slots {
		return fmt.Errorf("pci: slot %d out of range 0..%d", slot, Slots-1)
	}
	if h.slots[slot] != nil {
		return fmt.Errorf("pci: slot %d is taken", slot)
	}
	h.slots[slot], h.bars[slot] = e, bars
	// The window follows BAR moves and decode changes; callbacks already
	// set still run first.
	onBAR, onCmd := e.OnBAR, e.OnCommand
	e.OnBAR = func(i int, a uint64) {
		if onBAR != nil {
			onBAR(i, a)
		}
		h.window.remap()
	}
	e.OnCommand = func(c uint16) {
		if onCmd != nil {
			onCmd(c)
		}
		h.window.remap()
	}
	return nil
}

// Remap re-reads every function's BARs and command register, after a
// restore.
func (h *Host) Remap() { h.window.remap() }

// Window returns the bus device for the BAR window.
func (h *Host) Window() *Window { return &h.window }

// Place sets BAR bar of the function at slot to addr and enables memory
// decoding, as firmware does before the OS starts; the OS may move it.
func (h *Host) Place(slot, bar int, addr uint64) error {
	h.mu.Lock()
	e := h.slots[slot]
	h.mu.Unlock()
	if e == nil {
		return fmt.Errorf("pci: no function at slot %d", slot)
	}
	if err := e.place(bar, addr); err != nil {
		return fmt.Errorf("pci: slot %d: %w", slot, err)
	}
	h.window.remap()
	return nil
}

// Window is the bus device for the MMIO window that holds the functions'
// memory BARs. An access goes to the function whose memory BAR holds its
// address, if the function has memory decoding on. A BAR the guest moves
// partly outside the window, or onto another BAR, is not decoded at all:
// accesses to it read as all ones, as an unclaimed access does.
type Window struct {
	host       *Host
	base, size uint64
	log        func(error)

	mu      sync.RWMutex
	ranges  []barRange // sorted by start, non-overlapping
	onRemap func()
}

type barRange struct {
	start, end uint64 // relative to the window's base
	slot, bar  int
	h          BARHandler
}

// remap recomputes the decoded BARs after a BAR or command change.
func (w *Window) remap() {
	h := w.host
	h.mu.Lock()
	var rs []barRange
	for slot, e := range h.slots {
		if e == nil || h.bars[slot] == nil || e.Command()&CommandMemory == 0 {
			continue
		}
		for bar, r := range e.memoryBARs() {
			if r.size == 0 || r.addr == 0 {
				continue
			}
			if r.addr < w.base || r.addr-w.base > w.size || r.size > w.size-(r.addr-w.base) {
				w.refuse(fmt.Errorf("pci: slot %d BAR %d at %#x+%#x lies outside the window %#x+%#x; not decoded", slot, bar, r.addr, r.size, w.base, w.size))
				continue
			}
			rs = append(rs, barRange{start: r.addr - w.base, end: r.addr - w.base + r.size, slot: slot, bar: bar, h: h.bars[slot]})
		}
	}
	h.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i].start < rs[j].start })
	// Drop every BAR that overlaps another: neither may decode.
	var out []barRange
	for i, r := range rs {
		overlaps := i > 0 && rs[i-1].end > r.start || i+1 < len(rs) && r.end > rs[i+1].start
		if overlaps {
			w.refuse(fmt.Errorf("pci: slot %d BAR %d at %#x overlaps another BAR; not decoded", r.slot, r.bar, w.base+r.start))
			continue
		}
		out = append(out, r)
	}
	w.mu.Lock()
	w.ranges = out
	onRemap := w.onRemap
	w.mu.Unlock()
	if onRemap != nil {
		onRemap()
	}
}

// OnRemap sets f to be called after every change of the decoded BARs
// (a BAR moved, memory decoding switched, a restore), outside the
// window's locks.
func (w *Window) OnRemap(f func()) {
	w.mu.Lock()
	w.onRemap = f
	w.mu.Unlock()
}

// DecodedAt returns the guest-physical address at which the window
// decodes BAR bar of the function in slot, if it does.
func (w *Window) DecodedAt(slot, bar int) (uint64, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	for _, r := range w.ranges {
		if r.slot == slot && r.bar == bar {
			return w.base + r.start, true
		}
	}
	return 0, false
}

func (w *Window) refuse(err error) {
	if w.log != nil {
		w.log(err)
	}
}

func (w *Window) find(off uint64, n int) (barRange, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	i := sort.Search(len(w.ranges), func(i int) bool { return w.ranges[i].end > off })
	if i < len(w.ranges) && off >= w.ranges[i].start && off+uint64(n) <= w.ranges[i].end {
		return w.ranges[i], true
	}
	return barRange{}, false
}

// Read serves a guest read at off from the window's base.
func (w *Window) Read(off uint64, data []byte) {
	r, ok := w.find(off, len(data))
	if !ok {
		fill(data)
		return
	}
	r.h.ReadBAR(r.bar, off-r.start, data)
}

// Write serves a guest write at off from the window's base.
func (w *Window) Write(off uint64, data []byte) {
	if r, ok := w.find(off, len(data)); ok {
		r.h.WriteBAR(r.bar, off-r.start, data)
	}
}

// Decoded returns how many BARs the window decodes now.
func (w *Window) Decoded() int {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return len(w.ranges)
}

// AddressRegister is the device for the 4-byte address register. Only
// whole-dword accesses reach it: the byte and word accesses that probe
// for configuration mechanism #2 read as all ones and are ignored.
func (h *Host) AddressRegister() *AddressRegister { return (*AddressRegister)(h) }

// DataWindow is the device for the 4-byte data window.
func (h *Host) DataWindow() *DataWindow { return (*DataWindow)(h) }

// AddressRegister is Host's address register, a bus device.
type AddressRegister Host

// Read reads the address register.
func (a *AddressRegister) Read(off uint64, data []byte) {
	h := (*Host)(a)
	if off != 0 || len(data) != 4 {
		fill(data)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	binary.LittleEndian.PutUint32(data, h.addr)
}

// Write sets the address register.
func (a *AddressRegister) Write(off uint64, data []byte) {
	h := (*Host)(a)
	if off != 0 || len(data) != 4 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// Bits 30:24 are reserved and 1:0 read as zero.
	h.addr = binary.LittleEndian.Uint32(data) & 0x80fffffc
}

// DataWindow is Host's data window, a bus device: an access at offset o
// of size n reaches the selected register plus o.
type DataWindow Host

// target returns the function and configuration offset an access at off
// of n bytes reaches, or nil.
func (h *Host) target(off uint64, n int) (*Endpoint, uint8) {
	if off > 3 || !aligned(uint8(off), n) || int(off)+n > 4 {
		return nil, 0
	}
	h.mu.Lock()
	a := h.addr
	var f *Endpoint
	if a&addrEnable != 0 && (a>>addrBusShift)&0xff == 0 && (a>>addrFnShift)&7 == 0 {
		f = h.slots[(a>>addrDevShift)&0x1f]
	}
	h.mu.Unlock()
	return f, uint8(a&addrRegMask) + uint8(off)
}

// Read reads the selected configuration register.
func (d *DataWindow) Read(off uint64, data []byte) {
	f, reg := (*Host)(d).target(off, len(data))
	if f == nil {
		fill(data)
		return
	}
	f.ReadConfig(reg, data)
}

// Write writes the selected configuration register.
func (d *DataWindow) Write(off uint64, data []byte) {
	if f, reg := (*Host)(d).target(off, len(data)); f != nil {
		f.WriteConfig(reg, data)
	}
}

// Address returns the address register, for a snapshot: the guest may
// have selected a register and not yet accessed it.
func (h *Host) Address() uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.addr
}

// SetAddress restores the address register (its reserved bits stay clear).
func (h *Host) SetAddress(a uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addr = a & 0x80fffffc
}
