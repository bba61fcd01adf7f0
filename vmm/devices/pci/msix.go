package pci

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

// MSI-X: the interrupt path of the minimal profile's PCI devices. The
// table and the pending-bit array live in a memory BAR; the capability in
// configuration space holds the enable and function-mask bits.

// MaxMSIXVectors bounds a function's MSI-X table.
const MaxMSIXVectors = 2048

const (
	msixEntrySize  = 16
	msixCtrlEnable = 1 << 15
	msixCtrlMask   = 1 << 14
	msixVectorMask = 1 // vector control: masked
)

// x86 MSIs are writes into the 1 MiB interrupt window that starts at the
// local APIC's base (the destination APIC ID is in address bits 19:12).
var (
	msiAddressBase  = uint32(inventory.MustGet(inventory.LAPICMem).Base)
	msiAddressLimit = msiAddressBase | 0xfffff
)

// MSISink delivers one message-signalled interrupt.
type MSISink interface {
	SignalMSI(addrLo, addrHi, data uint32) error
}

// MSIXCapability returns the MSI-X capability for n vectors whose table
// is at tableOff in BAR tableBAR and whose pending bits are at pbaOff in
// BAR pbaBAR; the guest may write only the enable and function-mask bits.
func MSIXCapability(n int, tableBAR int, tableOff uint32, pbaBAR int, pbaOff uint32) Capability {
	body := make([]byte, 10)
	binary.LittleEndian.PutUint16(body, uint16(n-1))
	binary.LittleEndian.PutUint32(body[2:], tableOff|uint32(tableBAR))
	binary.LittleEndian.PutUint32(body[6:], pbaOff|uint32(pbaBAR))
	w := make([]byte, 10)
	w[1] = 0xc0
	return Capability{ID: CapMSIX, Body: body, Writable: w}
}

// MSIX is a function's MSI-X table and pending bits.
type MSIX struct {
	mu      sync.Mutex
	table   []byte
	pending []uint64
	sink    MSISink
	control func() uint16 // the capability's message control register
	errs    func(error)
}

// NewMSIX makes a table of n vectors, all masked. control reads the
// capability's message control register (the endpoint's configuration
// space); call Update after configuration writes to it.
func NewMSIX(n int, sink MSISink, control func() uint16, errs func(error)) (*MSIX, error) {
	if n < 1 || n > MaxMSIXVectors {
		return nil, fmt.Errorf("pci: %d MSI-X vectors, want 1 to %d", n, MaxMSIXVectors)
	}
	m := &MSIX{table: make([]byte, n*msixEntrySize), pending: make([]uint64, (n+63)/64), sink: sink, control: control, errs: errs}
	for i := range n {
		m.table[i*msixEntrySize+12] = msixVectorMask
	}
	return m, nil
}

// TableSize and PBASize are the bytes the table and the pending-bit array
// take in their BAR.
func (m *MSIX) TableSize() uint64 { return uint64(len(m.table)) }
func (m *MSIX) PBASize() uint64   { return uint64(len(m.pending) * 8) }

// ReadTable and WriteTable serve the table region of the BAR: dword or
// qword accesses, naturally aligned; anything else reads ones and is
// dropped, as the PCI spec lets a function do.
func (m *MSIX) ReadTable(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.tableAccess(off, len(data)) {
		fill(data)
		return
	}
	copy(data, m.table[off:])
}

// WriteTable writes table entries; unmasking an entry with its pending
// bit set delivers it.
func (m *MSIX) WriteTable(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.tableAccess(off, len(data)) {
		return
	}
	copy(m.table[off:], data)
	// Only the mask bit of vector control is defined.
	for e := off / msixEntrySize; e <= (off+uint64(len(data))-1)/msixEntrySize; e++ {
		ctl := m.table[e*msixEntrySize+12:]
		binary.LittleEndian.PutUint32(ctl, binary.LittleEndian.Uint32(ctl)&msixVectorMask)
	}
	m.flush()
}

func (m *MSIX) tableAccess(off uint64, n int) bool {
	return (n == 4 || n == 8) && off%uint64(n) == 0 && off < uint64(len(m.table)) && uint64(n) <= uint64(len(m.table))-off
}

// ReadPBA serves the pending-bit array; it is read-only.
func (m *MSIX) ReadPBA(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if (len(data) != 4 && len(data) != 8) || off%uint64(len(data)) != 0 || off >= m.PBASize() || uint64(len(data)) > m.PBASize()-off {
		fill(data)
		return
	}
	var b []byte
	for _, w := range m.pending {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	copy(data, b[off:])
}

// Notify raises vector v: it is delivered now if MSI-X is enabled and
// neither the function nor the vector is masked, and otherwise marked
// pending (when enabled) until it is unmasked.
func (m *MSIX) Notify(v int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.table)/msixEntrySize {
		return
	}
	ctrl := m.control()
	if ctrl&msixCtrlEnable == 0 {
		return
	}
	if ctrl&msixCtrlMask != 0 || m.masked(v) {
		m.pending[v/64] |= 1 << (v % 64)
		return
	}
	m.deliver(v)
}

// Update re-reads the message control register after the guest wrote it:
// clearing the function mask delivers what is pending.
func (m *MSIX) Update() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flush()
}

func (m *MSIX) masked(v int) bool {
	return m.table[v*msixEntrySize+12]&msixVectorMask != 0
}

// flush delivers the pending vectors that may now be delivered.
func (m *MSIX) flush() {
	ctrl := m.control()
	if ctrl&msixCtrlEnable == 0 || ctrl&msixCtrlMask != 0 {
		return
	}
	for v := range len(m.table) / msixEntrySize {
		if m.pending[v/64]&(1<<(v%64)) != 0 && !m.masked(v) {
			m.pending[v/64] &^= 1 << (v % 64)
			m.deliver(v)
		}
	}
}

// deliver sends vector v's message, if its address is an x86 MSI address.
func (m *MSIX) deliver(v int) {
	e := m.table[v*msixEntrySize:]
	lo, hi, data := binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]), binary.LittleEndian.Uint32(e[8:])
	if hi != 0 || lo < msiAddressBase || lo > msiAddressLimit {
		if m.errs != nil {
			m.errs(fmt.Errorf("pci: MSI-X vector %d has address %#x_%08x, outside the local APIC window; not delivered", v, hi, lo))
		}
		return
	}
	if err := m.sink.SignalMSI(lo, hi, data); err != nil && m.errs != nil {
		m.errs(fmt.Errorf("pci: MSI-X vector %d: %w", v, err))
	}
}

// MSIXState is the table and pending bits, for a snapshot.
type MSIXState struct {
	Table   []byte   `json:"table"`
	Pending []uint64 `json:"pending"`
}

// State returns a copy of the table and pending bits.
func (m *MSIX) State() MSIXState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MSIXState{Table: append([]byte(nil), m.table...), Pending: append([]uint64(nil), m.pending...)}
}

// SetState restores a saved table and pending bits: the vector count
// must match, and reserved vector-control bits must be clear.
func (m *MSIX) SetState(s MSIXState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(s.Table) != len(m.table) || len(s.Pending) != len(m.pending) {
		return fmt.Errorf("pci: saved MSI-X table of %d bytes and %d pending words, want %d and %d", len(s.Table), len(s.Pending), len(m.table), len(m.pending))
	}
	n := len(m.table) / msixEntrySize
	for v := range n {
		if binary.LittleEndian.Uint32(s.Table[v*msixEntrySize+12:])&^msixVectorMask != 0 {
			return fmt.Errorf("pci: saved MSI-X vector %d has reserved control bits set", v)
		}
	}
	for i, w := range s.Pending {
		if (i+1)*64 > n && w>>(n-i*64) != 0 {
			return fmt.Errorf("pci: saved MSI-X pending bits name vectors past %d", n-1)
		}
	}
	copy(m.table, s.Table)
	copy(m.pending, s.Pending)
	return nil
}
