// Package console is virtio-console without multiport (virtio 1.x, 5.3):
// the guest's hvc0. It is the console of the minimal profile, so that a
// guest booted with console=ttyS0 console=hvc0 keeps a console after the
// serial port vanishes at the handoff.
//
// Output (the transmit queue) is written to the host's writer as the
// driver kicks. Input is read from the host's reader by one goroutine
// for the console's life, and handed to the guest by the device's worker
// whenever the driver has posted receive buffers; bytes wait, in order,
// while it has none or while the machine is paused for a snapshot.
package console

import (
	"fmt"
	"io"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// Queue indices.
const (
	receiveq  = 0
	transmitq = 1
	queueSize = 128
	// maxPending bounds the input bytes held for a guest that reads none.
	maxPending = 64 << 10
)

// Console is the virtio-console backend.
type Console struct {
	out io.Writer

	mu      sync.Mutex
	pending []byte        // input not yet given to the guest
	more    chan struct{} // signalled when pending grows or the guest posts buffers
	stop    chan struct{} // closed to stop the worker
	done    chan struct{} // closed when the worker has stopped
}

// New returns a console writing guest output to out and, if in is not
// nil, giving the guest what is read from in.
func New(in io.Reader, out io.Writer) *Console {
	if out == nil {
		out = io.Discard
	}
	c := &Console{out: out, more: make(chan struct{}, 1)}
	if in != nil {
		go c.read(in)
	}
	return c
}

// read queues host input until in fails. The guest may not read for a
// long time; past maxPending the oldest input is dropped, as a terminal
// would.
func (c *Console) read(in io.Reader) {
	buf := make([]byte, 512)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			c.mu.Lock()
			c.pending = append(c.pending, buf[:n]...)
			if over := len(c.pending) - maxPending; over > 0 {
				c.pending = c.pending[over:]
			}
			c.mu.Unlock()
			c.signal()
		}
		if err != nil {
			return
		}
	}
}

func (c *Console) signal() {
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// Type is virtio's console device ID.
func (*Console) Type() uint16 { return virtio.TypeConsole }

// Features: none; one port, no size or emergency write.
func (*Console) Features() uint64 { return 0 }

// QueueSizes: receiveq and transmitq.
func (*Console) QueueSizes() []uint16 { return []uint16{queueSize, queueSize} }

// ReadConfig: the configuration (cols, rows, max_nr_ports, emerg_wr) is
// meaningful only with features not offered; it reads as zeros.
func (*Console) ReadConfig(off uint64, data []byte) {}

// WriteConfig ignores writes.
func (*Console) WriteConfig(uint64, []byte) {}

// Reset keeps pending input: it belongs to the host's side.
func (*Console) Reset() {}

// Notify writes what the guest transmitted, or tells the worker that the
// guest posted receive buffers.
func (c *Console) Notify(q int, queues []*virtio.Queue) error {
	if q == receiveq {
		c.signal()
		return nil
	}
	tx := queues[transmitq]
	for {
		ch, err := tx.Pop()
		if err != nil || ch == nil {
			return err
		}
		for _, b := range ch.Buffers {
			if b.Write {
				return fmt.Errorf("%w: console output %d has a device-writable buffer", virtio.ErrBadChain, ch.Head)
			}
			// A failing host writer loses output, not the guest's console.
			c.out.Write(b.Data)
		}
		tx.Push(ch, 0)
	}
}

// Start starts the worker that hands input to the guest.
func (c *Console) Start(_ uint64, t virtio.Transport) {
	c.mu.Lock()
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	stop, done := c.stop, c.done
	c.mu.Unlock()
	go c.work(t, stop, done)
	c.signal()
}

// Stop stops the worker and waits for it.
func (c *Console) Stop() {
	c.mu.Lock()
	stop, done := c.stop, c.done
	c.stop = nil
	c.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-done
}

func (c *Console) work(t virtio.Transport, stop, done chan struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-c.more:
		}
		err := t.Do(c.deliver)
		if err != nil {
			return // stopped, or the guest broke the queue
		}
	}
}

// deliver copies pending input into the receive buffers the guest
// posted, until one or the other runs out.
func (c *Console) deliver(qs []*virtio.Queue) error {
	if len(qs) <= receiveq || qs[receiveq] == nil {
		return nil // the driver did not enable its receive queue
	}
	rx := qs[receiveq]
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.pending) > 0 {
		ch, err := rx.Pop()
		if err != nil || ch == nil {
			return err
		}
		n := 0
		for _, b := range ch.Buffers {
			if !b.Write {
				return fmt.Errorf("%w: console input %d has a device-readable buffer", virtio.ErrBadChain, ch.Head)
			}
			n += copy(b.Data, c.pending[n:])
		}
		c.pending = c.pending[n:]
		rx.Push(ch, uint32(n))
	}
	return nil
}
