// Package ioapic is a userspace I/O APIC (82093AA-style, version 0x20) for
// KVM's split irqchip: the local APICs stay in KVM, and this device turns
// its input pins into message-signalled interrupts. It is the only
// interrupt controller of the minimal profile: there is no PIC.
package ioapic

import (
	"encoding/binary"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
)

// Pins is the number of input pins (redirection entries).
const Pins = 24

// Register offsets in the MMIO window, and indirect register indexes.
const (
	offSelect = 0x00
	offWindow = 0x10
	offEOI    = 0x40

	regID      = 0x00
	regVersion = 0x01
	regArb     = 0x02
	regRedir   = 0x10 // two 32-bit registers per pin

	version = 0x20
)

// Redirection entry fields.
const (
	redirVector      = 0xff
	redirDelivMode   = 0x7 << 8
	redirDestLogical = 1 << 11
	redirDelivStatus = 1 << 12
	redirRemoteIRR   = 1 << 14
	redirLevel       = 1 << 15
	redirMasked      = 1 << 16
	redirReadOnly    = redirDelivStatus | redirRemoteIRR
)

// Route is the message pin sends, as an MSI address and data, and whether
// it is masked.
type Route struct {
	Pin       int
	AddressLo uint32
	Data      uint32
	Masked    bool
}

// Sink delivers the IOAPIC's messages.
type Sink interface {
	// SetRoutes installs the message of every pin. It is called whenever
	// the guest reprograms a redirection entry.
	SetRoutes([]Route) error
	// Fire sends pin's message.
	Fire(pin int) error
}

// IOAPIC is the device. It is safe for concurrent use.
type IOAPIC struct {
	mu      sync.Mutex
	sink    Sink
	msiBase uint32 // the local APICs' MSI window
	id      uint32
	sel     uint32
	redir   [Pins]uint64
	level   [Pins]bool // input line levels
	errs    func(error)
}

// New returns an IOAPIC with every pin masked. msiBase is the MSI address
// window of the local APICs; errors from sink go to onError.
func New(sink Sink, msiBase uint32, onError func(error)) *IOAPIC {
	a := &IOAPIC{sink: sink, msiBase: msiBase, errs: onError}
	for i := range a.redir {
		a.redir[i] = redirMasked
	}
	return a
}

// Read serves MMIO reads of the register window.
func (a *IOAPIC) Read(offset uint64, data []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var v uint32
	switch offset {
	case offSelect:
		v = a.sel
	case offWindow:
		v = a.readReg(a.sel)
	}
	put(data, v)
}

// Write serves MMIO writes of the register window.
func (a *IOAPIC) Write(offset uint64, data []byte) {
	v := get(data)
	a.mu.Lock()
	defer a.mu.Unlock()
	switch offset {
	case offSelect:
		a.sel = v & 0xff
	case offWindow:
		a.writeReg(a.sel, v)
	case offEOI:
		a.eoi(uint8(v))
	}
}

func (a *IOAPIC) readReg(r uint32) uint32 {
	switch {
	case r == regID:
		return a.id
	case r == regVersion:
		return version | (Pins-1)<<16
	case r == regArb:
		return a.id
	case r >= regRedir && r < regRedir+2*Pins:
		e := a.redir[(r-regRedir)/2]
		if r%2 == 1 {
			return uint32(e >> 32)
		}
		return uint32(e)
	}
	return 0
}

func (a *IOAPIC) writeReg(r, v uint32) {
	switch {
	case r == regID:
		a.id = v & 0x0f000000
	case r >= regRedir && r < regRedir+2*Pins:
		pin := (r - regRedir) / 2
		e := a.redir[pin]
		if r%2 == 1 {
			e = e&0xffffffff | uint64(v)<<32
		} else {
			e = e&^0xffffffff | uint64(v)&^redirReadOnly | e&redirReadOnly
		}
		a.redir[pin] = e
		a.program()
		// Unmasking a level-triggered pin whose line is high delivers it.
		a.service(int(pin))
	}
}

// route returns the MSI of pin's entry.
func (a *IOAPIC) route(pin int) Route {
	e := a.redir[pin]
	dest := uint32(e>>56) & 0xff
	addr := a.msiBase | dest<<12
	if e&redirDestLogical != 0 {
		addr |= 1 << 2
	}
	data := uint32(e) & (redirVector | redirDelivMode)
	if e&redirLevel != 0 {
		data |= 1<<15 | 1<<14 // level-triggered, asserted
	}
	return Route{Pin: pin, AddressLo: addr, Data: data, Masked: e&redirMasked != 0}
}

func (a *IOAPIC) program() {
	routes := make([]Route, Pins)
	for i := range routes {
		routes[i] = a.route(i)
	}
	if err := a.sink.SetRoutes(routes); err != nil && a.errs != nil {
		a.errs(err)
	}
}

// SetLevel drives input pin. An edge-triggered pin fires on a rising edge;
// a level-triggered one fires while high, once per EOI.
func (a *IOAPIC) SetLevel(pin int, high bool) {
	if pin < 0 || pin >= Pins {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	rising := high && !a.level[pin]
	a.level[pin] = high
	e := a.redir[pin]
	if e&redirLevel == 0 {
		if rising && e&redirMasked == 0 {
			a.fire(pin)
		}
		return
	}
	a.service(pin)
}

// service delivers a level-triggered pin that is high, unmasked and not
// already waiting for its EOI.
func (a *IOAPIC) service(pin int) {
	e := a.redir[pin]
	if e&redirLevel == 0 || !a.level[pin] || e&(redirMasked|redirRemoteIRR) != 0 {
		return
	}
	a.redir[pin] |= redirRemoteIRR
	a.fire(pin)
}

func (a *IOAPIC) fire(pin int) {
	if err := a.sink.Fire(pin); err != nil && a.errs != nil {
		a.errs(err)
	}
}

// EOI ends the level-triggered interrupts with vector, as the local APIC
// reports it (KVM_EXIT_IOAPIC_EOI) or the guest writes it to the EOI
// register; a pin whose line is still high fires again.
func (a *IOAPIC) EOI(vector uint8) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.eoi(vector)
}

func (a *IOAPIC) eoi(vector uint8) {
	for pin, e := range a.redir {
		if e&redirRemoteIRR != 0 && uint8(e&redirVector) == vector {
			a.redir[pin] &^= redirRemoteIRR
			a.service(pin)
		}
	}
}

// Line returns pin as an interrupt line for a device.
func (a *IOAPIC) Line(pin int) irq.Line {
	return irq.LineFunc(func(high bool) { a.SetLevel(pin, high) })
}

func get(data []byte) uint32 {
	var b [4]byte
	copy(b[:], data)
	return binary.LittleEndian.Uint32(b[:])
}

func put(data []byte, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	copy(data, b[:])
}

// State is the IOAPIC's register state, for snapshots.
type State struct {
	ID     uint32       `json:"id"`
	Select uint32       `json:"select"`
	Redir  [Pins]uint64 `json:"redir"`
	Level  [Pins]bool   `json:"level"`
}

// State returns the register state.
func (a *IOAPIC) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return State{ID: a.id, Select: a.sel, Redir: a.redir, Level: a.level}
}

// SetState loads register state, reprograms the routes and delivers the
// level-triggered pins that are high and not waiting for an EOI.
func (a *IOAPIC) SetState(s State) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.id, a.sel, a.redir, a.level = s.ID&0x0f000000, s.Select&0xff, s.Redir, s.Level
	for i := range a.redir {
		a.redir[i] &^= redirDelivStatus
	}
	a.program()
	for pin := range a.redir {
		a.service(pin)
	}
}
