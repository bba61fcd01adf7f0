package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// ram is guest memory for tests: its bytes from guest-physical 0.
type ram []byte

func (r ram) Slice(gpa, n uint64) ([]byte, error) {
	if gpa > uint64(len(r)) || n > uint64(len(r))-gpa {
		return nil, fmt.Errorf("%#x+%#x is not RAM", gpa, n)
	}
	return r[gpa : gpa+n : gpa+n], nil
}

// Descriptor flags.
const (
	fNext     = 1
	fWrite    = 2
	fIndirect = 4
)

const (
	ramSize = 8 << 20
	bufBase = 0x10000
)

// ring is a split virtqueue as the test's driver sees it.
type ring struct {
	mem               ram
	size              uint16
	desc, avail, used uint64
	nextDesc          uint16 // next free descriptor
	seen              uint16 // used entries already taken
}

func (r *ring) setDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	d := r.mem[r.desc+16*uint64(i):]
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// offer makes head available.
func (r *ring) offer(head uint16) {
	idx := binary.LittleEndian.Uint16(r.mem[r.avail+2:])
	binary.LittleEndian.PutUint16(r.mem[r.avail+4+2*uint64(idx%r.size):], head)
	binary.LittleEndian.PutUint16(r.mem[r.avail+2:], idx+1)
}

func (r *ring) usedIdx() uint16 { return binary.LittleEndian.Uint16(r.mem[r.used+2:]) }

// usedElem is an entry of the used ring.
type usedElem struct{ id, len uint32 }

// takeUsed returns the used entries the device added since the last call.
func (r *ring) takeUsed() []usedElem {
	var out []usedElem
	for ; r.seen != r.usedIdx(); r.seen++ {
		e := r.mem[r.used+4+8*uint64(r.seen%r.size):]
		out = append(out, usedElem{binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])})
	}
	return out
}

// guest is guest memory with a receive and a transmit queue, and a bump
// allocator for buffers.
type guest struct {
	t     testing.TB
	mem   ram
	next  uint64
	rings [2]*ring
}

func newGuest(t testing.TB) *guest {
	mem := make(ram, ramSize)
	g := &guest{t: t, mem: mem, next: bufBase}
	g.rings[rxQueue] = &ring{mem: mem, size: QueueSize, desc: 0x1000, avail: 0x2000, used: 0x3000}
	g.rings[txQueue] = &ring{mem: mem, size: QueueSize, desc: 0x5000, avail: 0x6000, used: 0x7000}
	return g
}

// queues returns the device's view of the two queues.
func (g *guest) queues() []*virtio.Queue {
	var qs []*virtio.Queue
	for _, r := range g.rings {
		q := &virtio.Queue{Size: r.size, Desc: r.desc, Avail: r.avail, Used: r.used}
		if err := q.Enable(g.mem); err != nil {
			g.t.Fatal(err)
		}
		qs = append(qs, q)
	}
	return qs
}

func (g *guest) alloc(n int) uint64 {
	a := g.next
	g.next += uint64(n+15) &^ 15
	if g.next > ramSize {
		g.t.Fatalf("guest memory exhausted")
	}
	return a
}

// seg is one buffer of a chain: readable with data, or writable of n
// bytes.
type seg struct {
	data  []byte
	n     int
	write bool
}

func rd(b []byte) seg { return seg{data: b, n: len(b)} }
func wr(n int) seg    { return seg{n: n, write: true} }

// post writes a chain of segs on queue q, makes it available, and returns
// its head and its buffers' addresses.
func (g *guest) post(q int, segs ...seg) (uint16, []uint64) {
	r := g.rings[q]
	head := r.nextDesc
	var addrs []uint64
	for i, s := range segs {
		a := g.alloc(s.n)
		copy(g.mem[a:], s.data)
		addrs = append(addrs, a)
		idx := r.nextDesc
		r.nextDesc = (r.nextDesc + 1) % r.size
		var flags uint16
		if s.write {
			flags |= fWrite
		}
		if i < len(segs)-1 {
			flags |= fNext
		}
		r.setDesc(idx, a, uint32(s.n), flags, r.nextDesc)
	}
	r.offer(head)
	return head, addrs
}

// read returns the bytes the device wrote into a posted receive chain:
// written bytes across the buffers at addrs of sizes ns.
func (g *guest) read(addrs []uint64, ns []int, written int) []byte {
	var out []byte
	for i, a := range addrs {
		k := min(ns[i], written)
		out = append(out, g.mem[a:a+uint64(k)]...)
		written -= k
	}
	return out
}

// fakeTransport serialises a device's work as the PCI transport does.
type fakeTransport struct {
	mu      sync.Mutex
	queues  []*virtio.Queue
	stopped bool
	err     error
	changes atomic.Int32
}

func (f *fakeTransport) Do(fn func([]*virtio.Queue) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped || f.err != nil {
		return virtio.ErrStopped
	}
	if err := fn(f.queues); err != nil {
		f.err = err
		return err
	}
	return nil
}

func (f *fakeTransport) ConfigChanged() { f.changes.Add(1) }

// failure returns the error that broke the device, if any.
func (f *fakeTransport) failure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// bench is a device on a fake transport and guest, with a socket pair as
// its link: the test plays the network on peer.
type bench struct {
	t    *testing.T
	g    *guest
	ft   *fakeTransport
	d    *Device
	link *packetFile // the device's end
	peer *packetFile // the network's end
	logs chan error
}

// newBench makes a device; with link, one end of a socket pair is
// attached; with features, the device is started with them.
func newBench(t *testing.T, link bool, features uint64, start bool) *bench {
	t.Helper()
	b := &bench{t: t, g: newGuest(t), logs: make(chan error, 16)}
	var err error
	b.d, err = New(Options{MAC: []byte{2, 0, 0, 0, 0, 1}, Log: func(err error) {
		select {
		case b.logs <- err:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	b.ft = &fakeTransport{queues: b.g.queues()}
	if link {
		b.link, b.peer = socketPair(t)
		if err := b.d.Attach(b.link); err != nil {
			t.Fatal(err)
		}
	}
	if start {
		b.d.Start(features|virtio.FeatureVersion1, b.ft)
	}
	t.Cleanup(b.stop)
	return b
}

// stop resets the device as the transport does.
func (b *bench) stop() {
	b.ft.mu.Lock()
	b.ft.stopped = true
	b.ft.mu.Unlock()
	b.d.Stop()
	b.ft.mu.Lock()
	b.d.Reset()
	b.ft.mu.Unlock()
}

// notify kicks queue q as the transport would.
func (b *bench) notify(q int) error {
	return b.ft.Do(func(qs []*virtio.Queue) error { return b.d.Notify(q, qs) })
}

// locked runs f with the guest's memory still.
func (b *bench) locked(f func()) {
	b.ft.mu.Lock()
	defer b.ft.mu.Unlock()
	f()
}

// waitUsed waits until queue q has returned n chains since the last
// call, and returns them.
func (b *bench) waitUsed(q, n int) []usedElem {
	b.t.Helper()
	var got []usedElem
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.locked(func() { got = append(got, b.g.rings[q].takeUsed()...) })
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("queue %d returned %d chains, want %d", q, len(got), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitFor waits until cond, checked with the guest's memory still.
func (b *bench) waitFor(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		b.locked(func() { ok = cond() })
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (b *bench) stashLen() int {
	b.d.rxMu.Lock()
	defer b.d.rxMu.Unlock()
	return len(b.d.stash)
}

// socketPair returns the two ends of a SOCK_SEQPACKET pair as links.
func socketPair(t testing.TB) (*packetFile, *packetFile) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ends [2]*packetFile
	for i, fd := range fds {
		// Room for a few maximal packets in flight.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
		if ends[i], err = newPacketFile(fd, fmt.Sprintf("socket pair %d", i)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ends[i].Close() })
	}
	return ends[0], ends[1]
}

// recv reads one packet from p, failing the test after a while.
func recv(t testing.TB, p *packetFile) []byte {
	t.Helper()
	buf := make([]byte, maxPacket+100)
	p.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.ReadPacket(buf)
	if err != nil {
		t.Fatalf("reading the network's end: %v", err)
	}
	return buf[:n]
}

// noPacket checks that nothing arrives on p for a moment.
func noPacket(t testing.TB, p *packetFile) {
	t.Helper()
	buf := make([]byte, maxPacket)
	p.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := p.ReadPacket(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes (%v), want nothing", n, err)
	}
}

// packet returns a virtio-net header with flags and GSO type, followed by
// a frame of n bytes: broadcast, from 02:00:00:00:00:01, an experimental
// EtherType, then a pattern that depends on seed.
func packet(n int, seed byte) []byte {
	p := make([]byte, HeaderSize+n)
	f := p[HeaderSize:]
	for i := range f {
		f[i] = byte(i)*7 + seed
	}
	if n >= ethHeaderSize {
		copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
	}
	return p
}

// withNumBuffers returns p with num_buffers set to k.
func withNumBuffers(p []byte, k uint16) []byte {
	q := bytes.Clone(p)
	binary.LittleEndian.PutUint16(q[hdrNumBuffers:], k)
	return q
}

// split cuts p into pieces of the given sizes, the last taking the rest.
func split(p []byte, sizes ...int) [][]byte {
	var out [][]byte
	for _, s := range sizes {
		out = append(out, p[:s])
		p = p[s:]
	}
	return append(out, p)
}

// sinkLink is a Link that swallows packets, recording their sizes, and
// has none to read.
type sinkLink struct{ sizes []int }

func (l *sinkLink) ReadPacket([]byte) (int, error) {
	return 0, errors.New("sink link: nothing to read")
}

func (l *sinkLink) WritePacket(bufs [][]byte) error {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	l.sizes = append(l.sizes, n)
	return nil
}

func (l *sinkLink) SetReadDeadline(time.Time) error { return nil }
