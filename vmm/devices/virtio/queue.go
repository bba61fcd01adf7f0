// Package virtio implements the parts of virtio 1.x that every device
// shares, starting with split virtqueues. Everything in a virtqueue is
// written by the guest and treated as hostile: ring and buffer addresses
// and lengths are checked against guest memory, descriptor chains are
// bounded and may not loop, and a bad chain is an error for the device to
// turn into its needs-reset state, never a panic or an access outside
// guest memory.
package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// Memory is guest RAM as a queue sees it: Slice returns the host view of
// guest-physical [gpa, gpa+n), or an error if any of it is not RAM.
// memory.Guest implements it.
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// Descriptor flags.
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4

	descSize = 16

	// MaxQueueSize is the largest queue size virtio allows.
	MaxQueueSize = 32768
	// MaxChainBytes bounds the bytes one chain may describe.
	MaxChainBytes = 1<<32 - 1
)

// ErrBadChain wraps every problem with a descriptor chain or ring.
var ErrBadChain = errors.New("virtqueue: bad descriptor chain")

// Queue is a split virtqueue, as the driver configured it through the
// transport.
type Queue struct {
	Size              uint16 // a power of two, 1 to MaxQueueSize
	Desc, Avail, Used uint64 // guest-physical addresses of the three parts
	// EventIdx says the driver accepted VIRTIO_RING_F_EVENT_IDX: it asks
	// for interrupts and the device for kicks with the event indices at
	// the ends of the rings, not with the rings' flags.
	EventIdx bool

	mem                Memory
	desc, avail, used  []byte
	lastAvail, usedIdx uint16
	signalled          uint16 // used index at the last interrupt decision
	pushed             bool   // chains returned since the last interrupt decision
}

// availNoInterrupt is VRING_AVAIL_F_NO_INTERRUPT: the driver asks not to
// be interrupted for used buffers.
const availNoInterrupt = 1

// Buffer is one descriptor's guest memory.
type Buffer struct {
	Data  []byte // the host view of the guest buffer
	Write bool   // device-writable
}

// Chain is a popped descriptor chain: its head index, to return in the
// used ring, and its buffers, readable ones first.
type Chain struct {
	Head    uint16
	Buffers []Buffer
}

// Enable checks the queue's configuration and maps its rings: sizes and
// alignments as the virtio 1.x split-queue layout requires, and every
// part inside guest memory.
func (q *Queue) Enable(mem Memory) error {
	if q.Size == 0 || q.Size > MaxQueueSize || q.Size&(q.Size-1) != 0 {
		return fmt.Errorf("%w: queue size %d is not a power of two up to %d", ErrBadChain, q.Size, MaxQueueSize)
	}
	if q.Desc%16 != 0 || q.Avail%2 != 0 || q.Used%4 != 0 {
		return fmt.Errorf("%w: rings at %#x, %#x, %#x are misaligned (16, 2, 4)", ErrBadChain, q.Desc, q.Avail, q.Used)
	}
	n := uint64(q.Size)
	var err error
	if q.desc, err = mem.Slice(q.Desc, descSize*n); err != nil {
		return fmt.Errorf("%w: descriptor table: %w", ErrBadChain, err)
	}
	if q.avail, err = mem.Slice(q.Avail, 6+2*n); err != nil {
		return fmt.Errorf("%w: available ring: %w", ErrBadChain, err)
	}
	if q.used, err = mem.Slice(q.Used, 6+8*n); err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrBadChain, err)
	}
	q.mem = mem
	q.lastAvail = 0
	q.usedIdx = binary.LittleEndian.Uint16(q.used[2:])
	q.signalled = q.usedIdx
	return nil
}

// Restore enables a queue saved by a snapshot: the rings are checked and
// mapped as Enable does, and the device's indices are the saved ones.
func (q *Queue) Restore(mem Memory, lastAvail, usedIdx uint16) error {
	if err := q.Enable(mem); err != nil {
		return err
	}
	q.lastAvail, q.usedIdx, q.signalled = lastAvail, usedIdx, usedIdx
	return nil
}

// Indices returns the device's next available index and its used index,
// for a snapshot.
func (q *Queue) Indices() (lastAvail, usedIdx uint16) { return q.lastAvail, q.usedIdx }

// TakeInterrupt reports whether the device returned chains since the
// last call and the driver wants to hear of it.
//
// The driver clears VRING_AVAIL_F_NO_INTERRUPT, issues a full barrier and
// then reads the used index, to catch chains returned meanwhile; so the
// device must make its used-index store visible before it loads the
// flags. x86 may reorder a store with a later load, which would lose the
// interrupt (the driver sees the old index and sleeps; the device sees
// the old flag and stays silent), so a locked instruction sits between
// the two.
//
// With EventIdx the driver names instead the used index it wants to hear
// of (used_event, after the available ring): the device interrupts when
// the chains it returned since its last decision passed it.
func (q *Queue) TakeInterrupt() bool {
	if !q.pushed || q.avail == nil {
		return false
	}
	q.pushed = false
	fence.Add(0) // a locked read-modify-write: a full barrier on amd64
	if q.EventIdx {
		event := binary.LittleEndian.Uint16(q.avail[4+2*uint64(q.Size):])
		old := q.signalled
		q.signalled = q.usedIdx
		return q.usedIdx-event-1 < q.usedIdx-old
	}
	return binary.LittleEndian.Uint16(q.avail)&availNoInterrupt == 0
}

// usedNoNotify is VRING_USED_F_NO_NOTIFY: the device asks the driver not
// to kick it, because it is draining the queue anyway.
const usedNoNotify = 1

// SuppressKicks tells the driver not to notify the device of new chains
// (on) or to notify it again (off). Turning kicks back on returns whether
// chains arrived meanwhile: the driver may have added them without a
// kick, so the device must serve them. Like TakeInterrupt, it puts a full
// barrier between its store to the used ring's flags and its load of the
// available index, mirroring the driver's barrier between adding a chain
// and reading the flags.
//
// With EventIdx the flag means nothing to the driver; Pop asks for the
// next kick when it finds the queue empty.
func (q *Queue) SuppressKicks(on bool) (pending bool) {
	if q.used == nil || q.EventIdx {
		return false
	}
	var flags uint16
	if on {
		flags = usedNoNotify
	}
	binary.LittleEndian.PutUint16(q.used, flags)
	if on {
		return false
	}
	fence.Add(0)
	return q.Pending()
}

// fence is the target of the full memory barrier in TakeInterrupt.
var fence atomic.Int32

// Pending reports whether the driver has made chains available that the
// device has not popped.
func (q *Queue) Pending() bool {
	return q.avail != nil && binary.LittleEndian.Uint16(q.avail[2:]) != q.lastAvail
}

// Pop takes the next available chain, or returns nil if there is none. An
// error means the driver broke the queue: the device should enter its
// needs-reset state.
func (q *Queue) Pop() (*Chain, error) {
	if q.avail == nil {
		return nil, errors.New("virtqueue: not enabled")
	}
	availIdx := binary.LittleEndian.Uint16(q.avail[2:])
	if availIdx == q.lastAvail {
		if !q.EventIdx {
			return nil, nil
		}
		// Ask to be kicked for the next chain, then look once more: the
		// driver may have added one before it saw the request.
		binary.LittleEndian.PutUint16(q.used[4+8*uint64(q.Size):], q.lastAvail)
		fence.Add(0)
		if availIdx = binary.LittleEndian.Uint16(q.avail[2:]); availIdx == q.lastAvail {
			return nil, nil
		}
	}
	if uint16(availIdx-q.lastAvail) > q.Size {
		return nil, fmt.Errorf("%w: available index moved %d past the last seen, more than the queue's %d", ErrBadChain, uint16(availIdx-q.lastAvail), q.Size)
	}
	slot := uint64(q.lastAvail % q.Size)
	head := binary.LittleEndian.Uint16(q.avail[4+2*slot:])
	q.lastAvail++
	c := &Chain{Head: head}
	if err := q.walk(c, q.desc, uint64(q.Size), head, false); err != nil {
		return nil, err
	}
	return c, nil
}

// walk follows a chain from index i in table (n descriptors), appending
// its buffers to c. indirect says table is an indirect table, which may
// not itself hold indirect descriptors.
func (q *Queue) walk(c *Chain, table []byte, n uint64, i uint16, indirect bool) error {
	var total uint64
	seenWrite := false
	for steps := uint64(0); ; steps++ {
		if steps >= n {
			return fmt.Errorf("%w: chain from head %d is longer than its table (%d): a loop", ErrBadChain, c.Head, n)
		}
		if uint64(i) >= n {
			return fmt.Errorf("%w: descriptor index %d outside a table of %d", ErrBadChain, i, n)
		}
		d := table[descSize*uint64(i):]
		addr := binary.LittleEndian.Uint64(d)
		length := uint64(binary.LittleEndian.Uint32(d[8:]))
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descIndirect != 0 {
			switch {
			case steps != 0:
				// A chain is either one indirect descriptor or direct ones.
				return fmt.Errorf("%w: an indirect descriptor inside a chain", ErrBadChain)
			case indirect:
				return fmt.Errorf("%w: an indirect table holds an indirect descriptor", ErrBadChain)
			case flags&descNext != 0:
				return fmt.Errorf("%w: an indirect descriptor with the next flag", ErrBadChain)
			case length == 0 || length%descSize != 0 || length/descSize > MaxQueueSize:
				return fmt.Errorf("%w: indirect table of %d bytes", ErrBadChain, length)
			}
			t, err := q.mem.Slice(addr, length)
			if err != nil {
				return fmt.Errorf("%w: indirect table at %#x: %w", ErrBadChain, addr, err)
			}
			return q.walk(c, t, length/descSize, 0, true)
		}
		write := flags&descWrite != 0
		if seenWrite && !write {
			return fmt.Errorf("%w: a device-readable descriptor after a device-writable one", ErrBadChain)
		}
		seenWrite = seenWrite || write
		total += length
		if total > MaxChainBytes {
			return fmt.Errorf("%w: chain from head %d describes over %d bytes", ErrBadChain, c.Head, uint64(MaxChainBytes))
		}
		buf, err := q.mem.Slice(addr, length)
		if err != nil {
			return fmt.Errorf("%w: buffer %#x+%#x: %w", ErrBadChain, addr, length, err)
		}
		c.Buffers = append(c.Buffers, Buffer{Data: buf, Write: write})
		if flags&descNext == 0 {
			return nil
		}
		i = next
	}
}

// Push returns a chain to the driver in the used ring, with the number of
// bytes the device wrote into its writable buffers. The entry is written
// before the index: Go keeps stores in program order, and amd64 does not
// reorder stores, so the driver never sees the index before the entry.
func (q *Queue) Push(c *Chain, written uint32) {
	slot := uint64(q.usedIdx % q.Size)
	e := q.used[4+8*slot:]
	binary.LittleEndian.PutUint32(e, uint32(c.Head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.usedIdx++
	binary.LittleEndian.PutUint16(q.used[2:], q.usedIdx)
	q.pushed = true
}
