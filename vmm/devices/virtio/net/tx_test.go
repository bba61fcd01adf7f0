package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// TestTransmit: a packet reaches the link whole, header and frame, however
// the driver split it across descriptors, and its chain comes back with
// nothing written.
func TestTransmit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame int
		cut   []int // sizes of the pieces before the last
	}{
		{"one buffer", 60, nil},
		{"header, then the frame", 1514, []int{HeaderSize}},
		{"header and frame in pieces", 1514, []int{HeaderSize, 14, 100, 0, 1}},
		{"header split", 200, []int{5, 7, 20}},
		{"header and frame start together", 200, []int{HeaderSize + 14}},
		{"empty frame", 0, []int{HeaderSize}},
		{"largest frame", MaxFrameSize, []int{HeaderSize, 4096, 4096}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBench(t, true, 0, true)
			p := packet(tc.frame, 3)
			p[hdrFlags], p[hdrGSOType] = flagNeedsCsum, gsoTCPv4 // passed through, not interpreted
			var segs []seg
			for _, piece := range split(p, tc.cut...) {
				segs = append(segs, rd(piece))
			}
			head, _ := b.g.post(txQueue, segs...)
			if err := b.notify(txQueue); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, b.peer); !bytes.Equal(got, p) {
				t.Fatalf("the link got %d bytes, want the %d sent", len(got), len(p))
			}
			if used := b.g.rings[txQueue].takeUsed(); len(used) != 1 || used[0] != (usedElem{uint32(head), 0}) {
				t.Errorf("used %v, want chain %d with 0 bytes", used, head)
			}
			if st := b.d.Stats(); st != (Stats{TxPackets: 1, TxBytes: uint64(tc.frame)}) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestTransmitBatch: one kick sends every available packet, in order.
func TestTransmitBatch(t *testing.T) {
	b := newBench(t, true, 0, true)
	var sent [][]byte
	for i := range 10 {
		p := packet(100+i, byte(i))
		sent = append(sent, p)
		b.g.post(txQueue, rd(p[:HeaderSize]), rd(p[HeaderSize:]))
	}
	if err := b.notify(txQueue); err != nil {
		t.Fatal(err)
	}
	for i, p := range sent {
		if got := recv(t, b.peer); !bytes.Equal(got, p) {
			t.Fatalf("packet %d differs", i)
		}
	}
	if used := b.g.rings[txQueue].takeUsed(); len(used) != 10 {
		t.Errorf("%d chains used, want 10", len(used))
	}
}

// TestTransmitDropped: packets the device cannot send are dropped,
// counted, and their chains returned.
func TestTransmitDropped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		link   bool
		frame  int
		closed bool // the network's end is gone
	}{
		{"disconnected", false, 100, false},
		{"frame too large", true, MaxFrameSize + 1, false},
		{"link refuses", true, 100, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBench(t, tc.link, 0, true)
			if tc.closed {
				b.peer.Close()
			}
			p := packet(tc.frame, 1)
			b.g.post(txQueue, rd(p[:HeaderSize]), rd(p[HeaderSize:]))
			b.g.post(txQueue, rd(p[:HeaderSize]), rd(p[HeaderSize:]))
			if err := b.notify(txQueue); err != nil {
				t.Fatal(err)
			}
			if used := b.g.rings[txQueue].takeUsed(); len(used) != 2 {
				t.Errorf("%d chains used, want 2", len(used))
			}
			if st := b.d.Stats(); st != (Stats{TxDropped: 2}) {
				t.Errorf("stats %+v", st)
			}
			if tc.link && !tc.closed {
				noPacket(t, b.peer)
			}
			if tc.closed {
				// The receive side logs the end of the socket too.
				writes := 0
				for len(b.logs) > 0 {
					if err := <-b.logs; strings.Contains(err.Error(), "writing") {
						writes++
					}
				}
				if writes != 1 {
					t.Errorf("%d write errors logged, want 1", writes)
				}
			}
		})
	}
}

// TestTransmitAfterDetach: a detached link gets nothing more.
func TestTransmitAfterDetach(t *testing.T) {
	b := newBench(t, true, 0, true)
	p := packet(64, 0)
	b.g.post(txQueue, rd(p))
	b.notify(txQueue)
	recv(t, b.peer)
	b.d.Detach()
	b.g.post(txQueue, rd(p))
	b.notify(txQueue)
	noPacket(t, b.peer)
	if st := b.d.Stats(); st.TxPackets != 1 || st.TxDropped != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestTransmitManyBuffers: a packet in more buffers than writev takes
// (an indirect table) still goes out whole.
func TestTransmitManyBuffers(t *testing.T) {
	b := newBench(t, true, 0, true)
	const frame = iovMax + 500 // one byte a buffer after the header
	p := packet(frame, 9)
	table := b.g.alloc(16 * (frame + 1))
	hdr := b.g.alloc(HeaderSize)
	copy(b.g.mem[hdr:], p[:HeaderSize])
	data := b.g.alloc(len(p))
	copy(b.g.mem[data:], p)
	put := func(i int, addr uint64, length uint32, flags uint16) {
		d := b.g.mem[table+16*uint64(i):]
		binary.LittleEndian.PutUint64(d, addr)
		binary.LittleEndian.PutUint32(d[8:], length)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], uint16(i+1))
	}
	put(0, hdr, HeaderSize, fNext)
	for i := range frame {
		flags := uint16(fNext)
		if i == frame-1 {
			flags = 0
		}
		put(1+i, data+uint64(HeaderSize+i), 1, flags)
	}
	r := b.g.rings[txQueue]
	r.setDesc(0, table, uint32(16*(frame+1)), fIndirect, 0)
	r.offer(0)
	if err := b.notify(txQueue); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, b.peer); !bytes.Equal(got, p) {
		t.Fatalf("the link got %d bytes, want the %d sent", len(got), len(p))
	}
}

// TestHostileChains: chains that are not packets, or not receive
// buffers, break the device.
func TestHostileChains(t *testing.T) {
	for _, tc := range []struct {
		name  string
		queue int
		segs  []seg
	}{
		{"transmit: writable buffer", txQueue, []seg{rd(make([]byte, HeaderSize)), wr(100)}},
		{"transmit: only a writable buffer", txQueue, []seg{wr(100)}},
		{"transmit: shorter than the header", txQueue, []seg{rd(make([]byte, HeaderSize-1))}},
		{"transmit: header in pieces, too short", txQueue, []seg{rd(make([]byte, 4)), rd(make([]byte, 4)), rd(nil)}},
		{"transmit: empty", txQueue, []seg{rd(nil)}},
		{"receive: readable buffer", rxQueue, []seg{rd(make([]byte, 100)), wr(4096)}},
		{"receive: only readable", rxQueue, []seg{rd(make([]byte, 4096))}},
		{"receive: no room", rxQueue, []seg{wr(0)}},
	} {
		for _, mrg := range []bool{false, true} {
			if tc.queue == txQueue && mrg {
				continue
			}
			name := tc.name
			if mrg {
				name += " (mergeable)"
			}
			t.Run(name, func(t *testing.T) {
				b := newBench(t, false, 0, false)
				b.g.post(tc.queue, tc.segs...)
				var err error
				if tc.queue == txQueue {
					err = b.notify(txQueue)
				} else {
					err = b.ft.Do(func(qs []*virtio.Queue) error {
						_, err := b.d.deliver(qs[rxQueue], packet(100, 0), mrg)
						return err
					})
				}
				if !errors.Is(err, virtio.ErrBadChain) {
					t.Fatalf("%v, want ErrBadChain", err)
				}
			})
		}
	}
}

// FuzzTransmit puts arbitrary descriptors and available entries on the
// transmit queue and kicks it: no panic, every packet written to the link
// is one the chain described, and the counters add up.
func FuzzTransmit(f *testing.F) {
	seed := func(descs [][4]uint64, heads ...uint16) []byte {
		var b []byte
		for _, d := range descs {
			b = binary.LittleEndian.AppendUint64(b, d[0])
			b = binary.LittleEndian.AppendUint32(b, uint32(d[1]))
			b = binary.LittleEndian.AppendUint16(b, uint16(d[2]))
			b = binary.LittleEndian.AppendUint16(b, uint16(d[3]))
		}
		return b
	}
	f.Add(seed([][4]uint64{{bufBase, 12, fNext, 1}, {bufBase + 64, 60, 0, 0}}), []byte{0, 0})
	f.Add(seed([][4]uint64{{bufBase, 100, 0, 0}, {bufBase, 11, 0, 0}}), []byte{0, 0, 1, 0})
	f.Add(seed([][4]uint64{{bufBase, 32, fIndirect, 0}}), []byte{0, 0})
	f.Add(seed([][4]uint64{{bufBase, 70000, 0, 0}, {bufBase, 100, fWrite, 0}}), []byte{0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, descs []byte, heads []byte) {
		mem := make(ram, 0x30000)
		r := &ring{mem: mem, size: 16, desc: 0x1000, avail: 0x2000, used: 0x3000}
		copy(mem[r.desc:r.desc+16*uint64(r.size)], descs)
		copy(mem[bufBase:], descs) // something to point indirect tables at
		for i := 0; i+1 < len(heads) && i < 64; i += 2 {
			r.offer(binary.LittleEndian.Uint16(heads[i:]))
		}
		q := &virtio.Queue{Size: r.size, Desc: r.desc, Avail: r.avail, Used: r.used}
		if err := q.Enable(mem); err != nil {
			t.Fatal(err)
		}
		d, err := New(Options{})
		if err != nil {
			t.Fatal(err)
		}
		l := &sinkLink{}
		if err := d.Attach(l); err != nil {
			t.Fatal(err)
		}
		err = d.Notify(txQueue, []*virtio.Queue{nil, q})
		if err != nil && !errors.Is(err, virtio.ErrBadChain) {
			t.Fatalf("Notify: %v", err)
		}
		st := d.Stats()
		if st.TxPackets != uint64(len(l.sizes)) || st.RxPackets != 0 {
			t.Errorf("stats %+v for %d packets sent", st, len(l.sizes))
		}
		var bytes uint64
		for _, n := range l.sizes {
			if n < HeaderSize || n > maxPacket {
				t.Errorf("a packet of %d bytes reached the link", n)
			}
			bytes += uint64(n - HeaderSize)
		}
		if st.TxBytes != bytes {
			t.Errorf("%d bytes counted, %d sent", st.TxBytes, bytes)
		}
		if used := r.takeUsed(); len(used) != int(st.TxPackets+st.TxDropped) {
			t.Errorf("%d chains used, %d packets counted", len(used), st.TxPackets+st.TxDropped)
		}
	})
}
