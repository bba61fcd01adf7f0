package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// ram is guest memory for tests: n bytes from guest-physical 0.
type ram []byte

func (r ram) Slice(gpa, n uint64) ([]byte, error) {
	if gpa > uint64(len(r)) || n > uint64(len(r))-gpa {
		return nil, fmt.Errorf("%#x+%#x is not RAM", gpa, n)
	}
	return r[gpa : gpa+n : gpa+n], nil
}

const (
	descAt  = 0x1000
	availAt = 0x2000
	usedAt  = 0x3000
)

func (r ram) desc(i int, addr uint64, n uint32, flags, next uint16) {
	d := r[descAt+16*i:]
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// offer puts head in the available ring and bumps its index.
func (r ram) offer(size uint16, head uint16) {
	idx := binary.LittleEndian.Uint16(r[availAt+2:])
	binary.LittleEndian.PutUint16(r[availAt+4+2*int(idx%size):], head)
	binary.LittleEndian.PutUint16(r[availAt+2:], idx+1)
}

func newQueue(t testing.TB, r ram, size uint16) *Queue {
	q := &Queue{Size: size, Desc: descAt, Avail: availAt, Used: usedAt}
	if err := q.Enable(r); err != nil {
		t.Fatal(err)
	}
	return q
}

func TestPopPush(t *testing.T) {
	r := make(ram, 0x10000)
	q := newQueue(t, r, 8)
	// A request: a 16-byte header (readable), 512 bytes of data
	// (writable), a status byte (writable).
	r.desc(0, 0x4000, 16, descNext, 1)
	r.desc(1, 0x5000, 512, descNext|descWrite, 2)
	r.desc(2, 0x6000, 1, descWrite, 0)
	r.offer(8, 0)
	if !q.Pending() {
		t.Fatal("nothing pending")
	}
	c, err := q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	if c.Head != 0 || len(c.Buffers) != 3 || c.Buffers[0].Write || !c.Buffers[1].Write || len(c.Buffers[1].Data) != 512 {
		t.Fatalf("chain %+v", c)
	}
	c.Buffers[2].Data[0] = 0x5a
	if r[0x6000] != 0x5a {
		t.Error("a write to a buffer did not reach guest memory")
	}
	q.Push(c, 513)
	if idx := binary.LittleEndian.Uint16(r[usedAt+2:]); idx != 1 {
		t.Errorf("used index %d", idx)
	}
	if id, n := binary.LittleEndian.Uint32(r[usedAt+4:]), binary.LittleEndian.Uint32(r[usedAt+8:]); id != 0 || n != 513 {
		t.Errorf("used entry %d, %d", id, n)
	}
	if c, err := q.Pop(); c != nil || err != nil {
		t.Errorf("pop of an empty queue: %+v, %v", c, err)
	}
}

func TestIndirect(t *testing.T) {
	r := make(ram, 0x10000)
	q := newQueue(t, r, 4)
	table := r[0x7000:]
	for i, d := range []struct {
		addr  uint64
		n     uint32
		flags uint16
	}{{0x4000, 16, descNext}, {0x5000, 64, descWrite}} {
		binary.LittleEndian.PutUint64(table[16*i:], d.addr)
		binary.LittleEndian.PutUint32(table[16*i+8:], d.n)
		binary.LittleEndian.PutUint16(table[16*i+12:], d.flags)
		binary.LittleEndian.PutUint16(table[16*i+14:], uint16(i+1))
	}
	r.desc(2, 0x7000, 32, descIndirect, 0)
	r.offer(4, 2)
	c, err := q.Pop()
	if err != nil || c.Head != 2 || len(c.Buffers) != 2 || !c.Buffers[1].Write {
		t.Fatalf("indirect chain: %+v, %v", c, err)
	}
}

// TestHostileChains: each broken chain is an ErrBadChain, never a panic or
// a buffer outside guest memory.
func TestHostileChains(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(r ram)
	}{
		{"loop", func(r ram) { r.desc(0, 0x4000, 8, descNext, 1); r.desc(1, 0x4000, 8, descNext, 0) }},
		{"self loop", func(r ram) { r.desc(0, 0x4000, 8, descNext, 0) }},
		{"index past the table", func(r ram) { r.desc(0, 0x4000, 8, descNext, 9) }},
		{"buffer outside RAM", func(r ram) { r.desc(0, 0xfff0, 0x20, 0, 0) }},
		{"buffer wrapping the address space", func(r ram) { r.desc(0, ^uint64(0)-4, 16, 0, 0) }},
		{"readable after writable", func(r ram) { r.desc(0, 0x4000, 8, descNext|descWrite, 1); r.desc(1, 0x4100, 8, 0, 0) }},
		{"indirect and next", func(r ram) { r.desc(0, 0x7000, 16, descIndirect|descNext, 1) }},
		{"indirect table of odd size", func(r ram) { r.desc(0, 0x7000, 24, descIndirect, 0) }},
		{"indirect table outside RAM", func(r ram) { r.desc(0, 0xfff0, 32, descIndirect, 0) }},
		{"indirect inside a chain", func(r ram) { r.desc(0, 0x4000, 8, descNext, 1); r.desc(1, 0x7000, 16, descIndirect, 0) }},
		{"nested indirect", func(r ram) {
			r.desc(0, 0x7000, 16, descIndirect, 0)
			binary.LittleEndian.PutUint64(r[0x7000:], 0x7100)
			binary.LittleEndian.PutUint32(r[0x7008:], 16)
			binary.LittleEndian.PutUint16(r[0x700c:], descIndirect)
		}},
		{"head index past the table", func(r ram) {
			binary.LittleEndian.PutUint16(r[availAt+4:], 100)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := make(ram, 0x10000)
			q := newQueue(t, r, 8)
			r.offer(8, 0)
			tc.setup(r)
			c, err := q.Pop()
			if !errors.Is(err, ErrBadChain) {
				t.Fatalf("Pop: %+v, %v; want ErrBadChain", c, err)
			}
		})
	}
	// The driver moving its index by more than the queue holds.
	r := make(ram, 0x10000)
	q := newQueue(t, r, 8)
	binary.LittleEndian.PutUint16(r[availAt+2:], 9)
	if _, err := q.Pop(); !errors.Is(err, ErrBadChain) {
		t.Errorf("available index 9 ahead on a queue of 8: %v", err)
	}
}

func TestEnableRefuses(t *testing.T) {
	r := make(ram, 0x4000)
	for name, q := range map[string]Queue{
		"size not a power of two": {Size: 6, Desc: descAt, Avail: availAt, Used: usedAt},
		"size zero":               {Size: 0, Desc: descAt, Avail: availAt, Used: usedAt},
		"misaligned descriptors":  {Size: 8, Desc: descAt + 8, Avail: availAt, Used: usedAt},
		"used ring outside RAM":   {Size: 8, Desc: descAt, Avail: availAt, Used: 0x3ff0},
	} {
		if err := q.Enable(r); !errors.Is(err, ErrBadChain) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzQueue fills guest memory with the fuzzer's bytes and pops chains:
// no panic, and every buffer handed out lies inside guest memory.
func FuzzQueue(f *testing.F) {
	seed := make(ram, 0x4000)
	seed.desc(0, 0x3000, 16, descNext, 1)
	seed.desc(1, 0x3100, 64, descWrite, 0)
	seed.offer(8, 0)
	f.Add([]byte(seed[descAt:]), uint16(8))
	f.Fuzz(func(t *testing.T, img []byte, size uint16) {
		r := make(ram, 0x8000)
		copy(r[descAt:], img)
		q := &Queue{Size: size, Desc: descAt, Avail: availAt, Used: usedAt}
		if q.Enable(r) != nil {
			return
		}
		for range 64 {
			c, err := q.Pop()
			if err != nil || c == nil {
				return
			}
			// Buffers come only from Slice, which refuses what is not
			// RAM; a chain is bounded by its table.
			if len(c.Buffers) > MaxQueueSize {
				t.Fatalf("chain of %d buffers", len(c.Buffers))
			}
			q.Push(c, 0)
		}
	})
}

// TestEventIdx: with VIRTIO_RING_F_EVENT_IDX the device interrupts only
// when its returned chains pass the driver's used_event, and publishes
// avail_event when it finds the queue empty.
func TestEventIdx(t *testing.T) {
	r := make(ram, 0x10000)
	q := &Queue{Size: 8, Desc: descAt, Avail: availAt, Used: usedAt, EventIdx: true}
	if err := q.Enable(r); err != nil {
		t.Fatal(err)
	}
	usedEvent := func(v uint16) { binary.LittleEndian.PutUint16(r[availAt+4+2*8:], v) }
	availEvent := func() uint16 { return binary.LittleEndian.Uint16(r[usedAt+4+8*8:]) }
	serve := func() {
		for {
			c, err := q.Pop()
			if err != nil {
				t.Fatal(err)
			}
			if c == nil {
				return
			}
			q.Push(c, 0)
		}
	}
	for i := range 4 {
		r.desc(i, 0x4000, 16, descWrite, 0)
	}
	// The driver wants to hear when used index 2 is passed (event 1).
	usedEvent(1)
	r.offer(8, 0)
	serve()
	if q.TakeInterrupt() {
		t.Error("interrupted at used index 1, before the driver's event")
	}
	if got := availEvent(); got != 1 {
		t.Errorf("avail_event %d after the queue emptied at 1", got)
	}
	r.offer(8, 1)
	serve()
	if !q.TakeInterrupt() {
		t.Error("no interrupt when the used index passed the driver's event")
	}
	// The driver's event is behind: no interrupt until it moves it.
	r.offer(8, 2)
	serve()
	if q.TakeInterrupt() {
		t.Error("interrupted again with used_event unchanged")
	}
	usedEvent(3) // the driver consumed up to 3: tell it of the next
	r.offer(8, 3)
	serve()
	if !q.TakeInterrupt() {
		t.Error("no interrupt after the driver moved used_event")
	}
	if got := availEvent(); got != 4 {
		t.Errorf("avail_event %d, want 4", got)
	}
	// Kick suppression by flags does not apply.
	if q.SuppressKicks(true); binary.LittleEndian.Uint16(r[usedAt:]) != 0 {
		t.Error("the used ring's flags were set under EVENT_IDX")
	}
}
