package console

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// ram is guest memory for the tests.
type ram []byte

func (r ram) Slice(gpa, n uint64) ([]byte, error) {
	if gpa > uint64(len(r)) || n > uint64(len(r))-gpa {
		return nil, fmt.Errorf("%#x+%#x outside RAM", gpa, n)
	}
	return r[gpa : gpa+n], nil
}

// ring lays out one queue of size 8 at base: descriptors, then the
// available ring, then the used ring; buffers live from base+0x400.
type ring struct {
	r    ram
	base uint64
	q    *virtio.Queue
	next uint16 // next free descriptor and available slot
}

func newRing(t *testing.T, r ram, base uint64) *ring {
	g := &ring{r: r, base: base, q: &virtio.Queue{Size: 8, Desc: base, Avail: base + 0x100, Used: base + 0x200}}
	if err := g.q.Enable(r); err != nil {
		t.Fatal(err)
	}
	return g
}

// offer makes one single-buffer chain of n bytes available and returns
// the buffer's address.
func (g *ring) offer(n uint32, write bool, data []byte) uint64 {
	i := g.next
	addr := g.base + 0x400 + uint64(i)*0x100
	copy(g.r[addr:], data)
	d := g.r[g.base+16*uint64(i):]
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	var flags uint16
	if write {
		flags = 2
	}
	binary.LittleEndian.PutUint16(d[12:], flags)
	avail := g.r[g.base+0x100:]
	binary.LittleEndian.PutUint16(avail[4+2*(i%8):], i)
	g.next++
	binary.LittleEndian.PutUint16(avail[2:], g.next)
	return addr
}

func (g *ring) used() (idx uint16, lastLen uint32) {
	u := g.r[g.base+0x200:]
	idx = binary.LittleEndian.Uint16(u[2:])
	if idx > 0 {
		lastLen = binary.LittleEndian.Uint32(u[4+8*uint64((idx-1)%8)+4:])
	}
	return idx, lastLen
}

// transport runs Do directly, as the PCI transport does when live.
type transport struct {
	mu     sync.Mutex
	queues []*virtio.Queue
	calls  int
}

func (t *transport) Do(f func([]*virtio.Queue) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls++
	return f(t.queues)
}

func (t *transport) ConfigChanged() {}

func TestOutput(t *testing.T) {
	r := make(ram, 0x10000)
	rx, tx := newRing(t, r, 0x1000), newRing(t, r, 0x4000)
	var out bytes.Buffer
	c := New(nil, &out)
	tx.offer(5, false, []byte("hello"))
	tx.offer(6, false, []byte(" world"))
	if err := c.Notify(transmitq, []*virtio.Queue{rx.q, tx.q}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello world" {
		t.Errorf("output %q", out.String())
	}
	if idx, _ := tx.used(); idx != 2 {
		t.Errorf("used index %d", idx)
	}
	tx.offer(4, true, nil)
	if err := c.Notify(transmitq, []*virtio.Queue{rx.q, tx.q}); !errors.Is(err, virtio.ErrBadChain) {
		t.Errorf("a writable output buffer: %v", err)
	}
}

func TestInput(t *testing.T) {
	r := make(ram, 0x10000)
	rx, tx := newRing(t, r, 0x1000), newRing(t, r, 0x4000)
	pr, pw := io.Pipe()
	c := New(pr, io.Discard)
	tr := &transport{queues: []*virtio.Queue{rx.q, tx.q}}
	c.Start(0, tr)
	defer c.Stop()

	// Input arrives before the guest posts a buffer: it waits.
	pw.Write([]byte("ls -l\n"))
	time.Sleep(20 * time.Millisecond)
	tr.locked(func() {
		if idx, _ := rx.used(); idx != 0 {
			t.Fatal("input delivered without a buffer")
		}
	})
	// A 4-byte buffer takes the first four bytes, a second the rest.
	// The guest's side takes the transport's lock: it stands for the
	// memory ordering a real guest gets from the ring's barriers.
	var a, b uint64
	tr.locked(func() { a = rx.offer(4, true, nil) })
	c.Notify(receiveq, tr.queues)
	waitUsed(t, tr, rx, 1)
	tr.locked(func() { b = rx.offer(16, true, nil) })
	c.Notify(receiveq, tr.queues)
	waitUsed(t, tr, rx, 2)
	tr.locked(func() {
		if got := string(r[a:a+4]) + string(r[b:b+2]); got != "ls -l\n" {
			t.Errorf("guest read %q", got)
		}
		if _, n := rx.used(); n != 2 {
			t.Errorf("second chain used length %d", n)
		}
	})
}

func (t *transport) locked(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f()
}

func waitUsed(t *testing.T, tr *transport, g *ring, want uint16) {
	t.Helper()
	var idx uint16
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		tr.locked(func() { idx, _ = g.used() })
		if idx == want {
			return
		}
	}
	t.Fatalf("used index %d, want %d", idx, want)
}

func TestStopEndsWorker(t *testing.T) {
	c := New(nil, io.Discard)
	tr := &transport{}
	c.Start(0, tr)
	done := make(chan struct{})
	go func() { c.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Stop did not return")
	}
	c.Stop() // a second Stop is harmless
}
