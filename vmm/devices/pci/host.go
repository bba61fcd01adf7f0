package pci

import (
	"encoding/binary"
	"fmt"
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
	slots [Slots]Function
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
// own function at slot 0.
func NewHost() *Host { return &Host{} }

// Attach puts f at device number slot of bus 0.
func (h *Host) Attach(slot int, f Function) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if slot < 0 || slot >= Slots {
		return fmt.Errorf("pci: slot %d out of range 0..%d", slot, Slots-1)
	}
	if h.slots[slot] != nil {
		return fmt.Errorf("pci: slot %d is taken", slot)
	}
	h.slots[slot] = f
	return nil
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
func (h *Host) target(off uint64, n int) (Function, uint8) {
	if off > 3 || !aligned(uint8(off), n) || int(off)+n > 4 {
		return nil, 0
	}
	h.mu.Lock()
	a := h.addr
	var f Function
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
