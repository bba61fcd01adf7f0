package net

import (
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// transmit sends every packet available on q to the Link, each chain's
// buffers as they are in guest memory (the header, then the frame, laid
// out in any way the driver chose) with one write, and returns the
// chains with nothing written. Without a Link, or for a frame larger than
// MaxFrameSize, or when the Link refuses it, the packet is dropped and
// counted: a wire loses packets. A chain that is not a packet is a broken
// chain.
func (d *Device) transmit(q *virtio.Queue) error {
	if q == nil {
		return nil
	}
	d.linkMu.RLock()
	defer d.linkMu.RUnlock()
	a := d.link
	for {
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		bufs := d.txBufs[:0]
		total := 0
		for _, b := range c.Buffers {
			if b.Write {
				return fmt.Errorf("%w: transmit chain %d has a device-writable buffer", virtio.ErrBadChain, c.Head)
			}
			if len(b.Data) > 0 {
				bufs = append(bufs, b.Data)
				total += len(b.Data)
			}
		}
		d.txBufs = bufs
		if total < HeaderSize {
			return fmt.Errorf("%w: transmit chain %d holds %d bytes, less than the %d-byte header", virtio.ErrBadChain, c.Head, total, HeaderSize)
		}
		frame := total - HeaderSize
		switch {
		case a == nil, frame > MaxFrameSize:
			d.txDropped.Add(1)
		default:
			if err := a.l.WritePacket(bufs); err != nil {
				d.txDropped.Add(1)
				if !a.writeLogged.Swap(true) {
					d.logf("writing to the link (logged once per attachment): %w", err)
				}
			} else {
				d.txPackets.Add(1)
				d.txBytes.Add(uint64(frame))
			}
		}
		clear(bufs) // hold no views of guest memory between kicks
		q.Push(c, 0)
	}
}
