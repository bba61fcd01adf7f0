package net

import (
	"encoding/binary"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// Offsets and values in struct virtio_net_hdr_v1.
const (
	hdrFlags      = 0
	hdrGSOType    = 1
	hdrCsumStart  = 6
	hdrCsumOffset = 8
	hdrNumBuffers = 10

	flagNeedsCsum = 1
	flagDataValid = 2

	gsoNone  = 0
	gsoTCPv4 = 1
	gsoTCPv6 = 4
)

// reader is one run of the receive goroutine, on one Link.
type reader struct {
	link Link
	stop chan struct{} // closed to stop it
	done chan struct{} // closed when it has stopped
}

// rxChain is a receive chain taken from the guest and not yet used, with
// the bytes its buffers hold.
type rxChain struct {
	c    *virtio.Chain
	room int
}

// outcome is what became of a packet offered to the guest.
type outcome int

const (
	noRoom    outcome = iota // not enough buffers yet: try again after a kick
	delivered                // in the guest's buffers
	dropped                  // dropped and counted
	halted                   // the goroutine was stopped
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// receive is the receive goroutine: it reads packets from r.link into buf
// and delivers them to the guest through t, one at a time, until r.stop
// is closed. A read error is logged and ends the reading: the link is
// broken, and spinning on it would help no one.
func (d *Device) receive(r *reader, t virtio.Transport, features uint64, buf []byte) {
	defer close(r.done)
	mrg := features&featMrgRxbuf != 0
	off := offloadsFor(features)
	for !closed(r.stop) {
		n, err := r.link.ReadPacket(buf)
		if err != nil {
			if closed(r.stop) {
				return
			}
			d.logf("reading the link: %w; receiving stops until a link is attached again or the device restarts", err)
			<-r.stop
			return
		}
		if n < 0 || n > len(buf) {
			d.rxDropped.Add(1) // a Link breaking io.Reader's contract
			continue
		}
		pkt := buf[:n]
		if !fixHeader(pkt, off) {
			d.rxDropped.Add(1)
			continue
		}
		if !d.deliverWaiting(r, t, pkt, mrg) {
			return
		}
	}
}

// deliverWaiting delivers pkt, waiting for the guest to post buffers as
// long as it has to. It returns false when the goroutine must end: it
// was stopped, or the device stopped or broke (then it waits for Stop).
func (d *Device) deliverWaiting(r *reader, t virtio.Transport, pkt []byte, mrg bool) bool {
	for {
		var res outcome
		err := t.Do(func(queues []*virtio.Queue) error {
			// Checked under the transport's lock: once Stop has
			// closed stop, this goroutine never touches the queues.
			if closed(r.stop) {
				res = halted
				return nil
			}
			var err error
			res, err = d.deliver(queues[rxQueue], pkt, mrg)
			return err
		})
		switch {
		case err != nil:
			// The device stopped (virtio.ErrStopped), or the guest
			// broke the queue and the transport put the device into
			// its needs-reset state: nothing to do until Stop.
			d.rxDropped.Add(1)
			<-r.stop
			return false
		case res == halted:
			d.rxDropped.Add(1)
			return false
		case res != noRoom:
			return true
		}
		select {
		case <-d.kick:
		case <-r.stop:
			d.rxDropped.Add(1)
			return false
		}
	}
}

// deliver puts pkt, header and frame, into the guest's receive buffers
// on q, taking chains from q as it needs them and keeping those it could
// not use yet. Call it serialised with the queue's other users.
func (d *Device) deliver(q *virtio.Queue, pkt []byte, mrg bool) (outcome, error) {
	if q == nil {
		return noRoom, nil // the driver has not enabled the queue yet
	}
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	if d.stashQ != q {
		d.dropStash()
		d.stashQ = q
	}
	size := len(pkt)
	k := 0 // chains the packet uses
	if !mrg {
		// The packet must fit in one chain. One that is too small is
		// kept for a smaller packet.
		if len(d.stash) == 0 {
			if ok, err := d.take(q); !ok || err != nil {
				return noRoom, err
			}
		}
		if d.stash[0].room < size {
			d.rxDropped.Add(1)
			return dropped, nil
		}
		k = 1
	} else {
		for room := 0; room < size; k++ {
			if k == len(d.stash) {
				if len(d.stash) >= int(q.Size) {
					// More chains than the queue holds and still
					// not enough room: this packet never fits.
					d.rxDropped.Add(1)
					return dropped, nil
				}
				if ok, err := d.take(q); !ok || err != nil {
					return noRoom, err
				}
			}
			room += d.stash[k].room
		}
	}
	binary.LittleEndian.PutUint16(pkt[hdrNumBuffers:], uint16(k))
	rest := pkt
	for _, c := range d.stash[:k] {
		n := fill(c.c, rest)
		rest = rest[n:]
		q.Push(c.c, uint32(n))
	}
	d.consume(k)
	d.rxPackets.Add(1)
	d.rxBytes.Add(uint64(size - HeaderSize))
	return delivered, nil
}

// take pops a receive chain from q into the stash; false if q has none.
// Call with rxMu held.
func (d *Device) take(q *virtio.Queue) (bool, error) {
	c, err := q.Pop()
	if err != nil || c == nil {
		return false, err
	}
	room := 0
	for _, b := range c.Buffers {
		if !b.Write {
			return false, fmt.Errorf("%w: receive chain %d has a device-readable buffer", virtio.ErrBadChain, c.Head)
		}
		room += len(b.Data)
	}
	if room == 0 {
		return false, fmt.Errorf("%w: receive chain %d has no room", virtio.ErrBadChain, c.Head)
	}
	d.stash = append(d.stash, rxChain{c: c, room: room})
	return true, nil
}

// fill copies the start of pkt into c's buffers and returns how much it
// copied.
func fill(c *virtio.Chain, pkt []byte) int {
	n := 0
	for _, b := range c.Buffers {
		if n == len(pkt) {
			break
		}
		n += copy(b.Data, pkt[n:])
	}
	return n
}

// consume removes the first k chains of the stash. Call with rxMu held.
func (d *Device) consume(k int) {
	n := copy(d.stash, d.stash[k:])
	clear(d.stash[n:])
	d.stash = d.stash[:n]
}

// dropStash forgets the stash. Call with rxMu held.
func (d *Device) dropStash() {
	clear(d.stash)
	d.stash = d.stash[:0]
}

// clearStash forgets the stash and the queue it came from.
func (d *Device) clearStash() {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	d.dropStash()
	d.stashQ = nil
}

// returnStash gives the stash's chains back to the guest, unused (a
// length of 0, which a driver takes as an empty or bad packet and
// recycles), if they came from q. Call serialised with q's other users.
func (d *Device) returnStash(q *virtio.Queue) {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	if q != nil && q == d.stashQ {
		for _, c := range d.stash {
			q.Push(c.c, 0)
		}
	}
	d.dropStash()
}

// fixHeader checks the header of a packet from the Link against the
// offloads the guest accepted, and reports whether the packet may go to
// the guest: a segmentation offload the guest did not accept cannot be
// undone here, but a checksum it did not accept to complete is completed.
// It clears the header flags the guest did not negotiate.
func fixHeader(pkt []byte, o Offloads) bool {
	if len(pkt) < HeaderSize+ethHeaderSize {
		return false
	}
	switch pkt[hdrGSOType] {
	case gsoNone:
	case gsoTCPv4:
		if !o.TSO4 {
			return false
		}
	case gsoTCPv6:
		if !o.TSO6 {
			return false
		}
	default: // UDP, ECN, ...: not offered
		return false
	}
	flags := pkt[hdrFlags] & (flagNeedsCsum | flagDataValid)
	if !o.Checksum {
		if flags&flagNeedsCsum != 0 {
			start := int(binary.LittleEndian.Uint16(pkt[hdrCsumStart:]))
			offset := int(binary.LittleEndian.Uint16(pkt[hdrCsumOffset:]))
			if !finishChecksum(pkt[HeaderSize:], start, offset) {
				return false
			}
		}
		flags = 0 // the spec: flags are zero without GUEST_CSUM
	}
	pkt[hdrFlags] = flags
	return true
}

// finishChecksum completes a partial checksum, as a NIC would: the
// Internet checksum of frame from start to its end, whose field at
// start+offset holds the pseudo-header's sum, stored in that field.
func finishChecksum(frame []byte, start, offset int) bool {
	if start+offset+2 > len(frame) {
		return false
	}
	var sum uint64
	b := frame[start:]
	for len(b) >= 2 {
		sum += uint64(b[0])<<8 | uint64(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff // as Linux does for UDP, where 0 means no checksum
	}
	binary.BigEndian.PutUint16(frame[start+offset:], c)
	return true
}
