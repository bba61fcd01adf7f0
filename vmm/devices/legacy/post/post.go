// Package post emulates the POST diagnostic port: firmware writes progress
// codes to it and Linux writes to it as an I/O delay. A write records the
// code and costs nothing more; a read returns the last code written.
package post

import (
	"sync/atomic"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
)

// Port is the POST port. It is safe for concurrent use.
type Port struct {
	last atomic.Uint32
}

var _ bus.Device = (*Port)(nil)

// New returns a POST port whose last code is 0.
func New() *Port { return new(Port) }

// Last returns the last code the guest wrote.
func (p *Port) Last() byte { return byte(p.last.Load()) }

// Read returns the last code; bytes of a wider access beyond the port read
// as an absent port.
func (p *Port) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	data[0] = p.Last()
}

// Write records the code: the first byte written.
func (p *Port) Write(offset uint64, data []byte) {
	p.last.Store(uint32(data[0]))
}
