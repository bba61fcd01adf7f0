// Package port92 emulates System Control Port A, the PS/2-era register
// through which a BIOS opens the A20 gate quickly ("fast A20") and which
// can reset the CPU.
//
// Bit 1 is the A20 gate and bit 0 the fast reset: writing bit 0 as 1 asks
// the machine for a reset. The other bits (activity lights, the password
// lock) are stored and read back. KVM always runs with A20 enabled, so a
// guest that closes the gate does not get addresses wrapped at 1 MiB; the
// bit is only remembered. Nothing that boots on this platform (SeaBIOS,
// syslinux, Linux) closes it.
package port92

import (
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
)

const (
	bitReset = 1 << 0
	// BitA20 is the A20 gate bit.
	BitA20 = 1 << 1
)

// Port is the register. It is safe for concurrent use.
type Port struct {
	mu    sync.Mutex
	v     byte
	reset func()
}

var _ bus.Device = (*Port)(nil)

// New returns the port with A20 open, as SeaBIOS leaves it and as KVM
// runs; reset is called when the guest sets the reset bit.
func New(reset func()) *Port { return &Port{v: BitA20, reset: reset} }

// Read returns the register; wider accesses read it in the first byte
// and zeros above.
func (p *Port) Read(offset uint64, data []byte) {
	clear(data)
	if offset != 0 || len(data) == 0 {
		return
	}
	p.mu.Lock()
	data[0] = p.v
	p.mu.Unlock()
}

// Write sets the register from the first byte; the reset bit is not
// stored, and a write with it set calls reset.
func (p *Port) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	p.mu.Lock()
	p.v = data[0] &^ bitReset
	p.mu.Unlock()
	if data[0]&bitReset != 0 && p.reset != nil {
		p.reset()
	}
}
