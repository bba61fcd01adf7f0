package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// rxPosted is a receive chain the test posted.
type rxPosted struct {
	head  uint16
	addrs []uint64
	ns    []int
}

// postRx posts receive chains with buffers of the given sizes.
func (b *bench) postRx(chains ...[]int) []rxPosted {
	var out []rxPosted
	b.locked(func() {
		for _, ns := range chains {
			var segs []seg
			for _, n := range ns {
				segs = append(segs, wr(n))
			}
			head, addrs := b.g.post(rxQueue, segs...)
			out = append(out, rxPosted{head, addrs, ns})
		}
	})
	return out
}

// received checks that used holds, in order, chains of posted (by head)
// that together hold want, and returns how many bytes each held.
func (b *bench) received(posted []rxPosted, used []usedElem, want []byte) []int {
	b.t.Helper()
	byHead := map[uint32]rxPosted{}
	for _, p := range posted {
		byHead[uint32(p.head)] = p
	}
	var got []byte
	var lens []int
	b.locked(func() {
		for _, u := range used {
			p, ok := byHead[u.id]
			if !ok {
				b.t.Fatalf("used entry for chain %d, which was not posted", u.id)
			}
			got = append(got, b.g.read(p.addrs, p.ns, int(u.len))...)
			lens = append(lens, int(u.len))
		}
	})
	if !bytes.Equal(got, want) {
		b.t.Fatalf("the guest got %d bytes (header % x), want %d (header % x)", len(got), got[:min(len(got), HeaderSize)], len(want), want[:HeaderSize])
	}
	return lens
}

func pages(n int) [][]int {
	var out [][]int
	for range n {
		out = append(out, []int{4096})
	}
	return out
}

// TestReceive: a packet from the link reaches the guest's buffers whole,
// in one chain or, with mergeable buffers, in as many as it needs, with
// num_buffers saying how many.
func TestReceive(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mrg      bool
		chains   [][]int
		frame    int
		wantLens []int
	}{
		{"one big buffer", false, [][]int{{maxPacket}}, 1000, []int{1012}},
		{"header across buffers", false, [][]int{{10, 5000}}, 3000, []int{3012}},
		{"largest frame", false, [][]int{{maxPacket}}, MaxFrameSize, []int{maxPacket}},
		{"buffers in several descriptors", false, [][]int{{4096, 4096, 4096}}, 9000, []int{9012}},
		{"mergeable, one page", true, pages(4), 1000, []int{1012}},
		{"mergeable, exactly one page", true, pages(4), 4096 - HeaderSize, []int{4096}},
		{"mergeable, across pages", true, pages(20), 10000, []int{4096, 4096, 1820}},
		{"mergeable, largest frame", true, pages(20), MaxFrameSize,
			[]int{4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 26}},
		{"mergeable, chains of two buffers", true, [][]int{{2048, 2048}, {2048, 2048}, {2048, 2048}}, 5000, []int{4096, 916}},
		{"mergeable, chains of different sizes", true, [][]int{{100}, {1500}, {20000}}, 3000, []int{100, 1500, 1412}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var features uint64
			if tc.mrg {
				features = featMrgRxbuf
			}
			b := newBench(t, true, features, true)
			posted := b.postRx(tc.chains...)
			p := packet(tc.frame, 5)
			if err := b.peer.WritePacket([][]byte{p}); err != nil {
				t.Fatal(err)
			}
			used := b.waitUsed(rxQueue, len(tc.wantLens))
			lens := b.received(posted, used, withNumBuffers(p, uint16(len(tc.wantLens))))
			if !equalInts(lens, tc.wantLens) {
				t.Errorf("chains hold %v bytes, want %v", lens, tc.wantLens)
			}
			if st := b.d.Stats(); st != (Stats{RxPackets: 1, RxBytes: uint64(tc.frame)}) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReceiveMany: packets keep coming, in order, as the guest keeps
// posting buffers.
func TestReceiveMany(t *testing.T) {
	b := newBench(t, true, featMrgRxbuf, true)
	posted := b.postRx(pages(64)...)
	var want []byte
	var chains int
	for i := range 20 {
		p := packet(1000+500*i, byte(i))
		k := (len(p) + 4095) / 4096
		chains += k
		want = append(want, withNumBuffers(p, uint16(k))...)
		if err := b.peer.WritePacket([][]byte{p}); err != nil {
			t.Fatal(err)
		}
		if i == 10 {
			posted = append(posted, b.postRx(pages(64)...)...)
			b.notify(rxQueue)
		}
	}
	used := b.waitUsed(rxQueue, chains)
	b.received(posted, used, want)
	if st := b.d.Stats(); st.RxPackets != 20 || st.RxDropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestReceiveWaitsForBuffers: a packet larger than the buffers the guest
// posted waits, holding them, until the guest posts more; while it waits
// the device cannot be captured.
func TestReceiveWaitsForBuffers(t *testing.T) {
	b := newBench(t, true, featMrgRxbuf, true)
	posted := b.postRx(pages(1)...)
	p := packet(10000, 7)
	if err := b.peer.WritePacket([][]byte{p}); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the device to take the posted buffer", func() bool { return b.stashLen() == 1 })
	if _, err := b.d.SaveState(); err == nil || !strings.Contains(err.Error(), "detach the link") {
		t.Errorf("SaveState while holding buffers: %v", err)
	}
	// One more page is not enough yet.
	posted = append(posted, b.postRx(pages(1)...)...)
	if err := b.notify(rxQueue); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the device to take the second buffer", func() bool { return b.stashLen() == 2 })
	b.locked(func() {
		if idx := b.g.rings[rxQueue].usedIdx(); idx != 0 {
			t.Fatalf("used index %d before the packet fits", idx)
		}
	})
	posted = append(posted, b.postRx(pages(2)...)...)
	if err := b.notify(rxQueue); err != nil {
		t.Fatal(err)
	}
	used := b.waitUsed(rxQueue, 3)
	b.received(posted, used, withNumBuffers(p, 3))
	if st := b.d.Stats(); st != (Stats{RxPackets: 1, RxBytes: 10000}) {
		t.Errorf("stats %+v", st)
	}
	// The fourth page stays posted, not held.
	b.waitFor("the stash to empty", func() bool { return b.stashLen() == 0 })
	if _, err := b.d.SaveState(); err != nil {
		t.Errorf("SaveState: %v", err)
	}
}

// TestReceiveWaitsForQueue: packets arriving before the guest posted any
// buffer wait for them.
func TestReceiveWaitsForQueue(t *testing.T) {
	b := newBench(t, true, 0, true)
	p := packet(500, 1)
	if err := b.peer.WritePacket([][]byte{p}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	posted := b.postRx([]int{2048})
	b.notify(rxQueue)
	b.received(posted, b.waitUsed(rxQueue, 1), withNumBuffers(p, 1))
}

// TestReceiveTooSmall: without mergeable buffers a packet larger than the
// guest's buffer is dropped, and the buffer serves the next packet.
func TestReceiveTooSmall(t *testing.T) {
	b := newBench(t, true, 0, true)
	posted := b.postRx([]int{1526})
	big, small := packet(1600, 1), packet(1500, 2)
	for _, p := range [][]byte{big, small} {
		if err := b.peer.WritePacket([][]byte{p}); err != nil {
			t.Fatal(err)
		}
	}
	b.received(posted, b.waitUsed(rxQueue, 1), withNumBuffers(small, 1))
	if st := b.d.Stats(); st != (Stats{RxPackets: 1, RxBytes: 1500, RxDropped: 1}) {
		t.Errorf("stats %+v", st)
	}
}

// TestReceiveNeverFits: with mergeable buffers, a packet larger than all
// the buffers the queue can hold is dropped, and the buffers serve the
// next packet.
func TestReceiveNeverFits(t *testing.T) {
	b := newBench(t, true, featMrgRxbuf, true)
	var tiny [][]int
	for range QueueSize {
		tiny = append(tiny, []int{16})
	}
	posted := b.postRx(tiny...)
	big, small := packet(QueueSize*16, 1), packet(100, 2)
	for _, p := range [][]byte{big, small} {
		if err := b.peer.WritePacket([][]byte{p}); err != nil {
			t.Fatal(err)
		}
	}
	used := b.waitUsed(rxQueue, 7)
	b.received(posted, used, withNumBuffers(small, 7))
	if st := b.d.Stats(); st != (Stats{RxPackets: 1, RxBytes: 100, RxDropped: 1}) {
		t.Errorf("stats %+v", st)
	}
}

// TestReceiveMalformed: packets from the link the guest cannot take are
// dropped and counted; the next good one is delivered.
func TestReceiveMalformed(t *testing.T) {
	b := newBench(t, true, featMrgRxbuf, true)
	posted := b.postRx(pages(4)...)
	tso := packet(1000, 1)
	tso[hdrGSOType] = gsoTCPv4
	// (An empty packet would read as the end of the socket.)
	for _, p := range [][]byte{packet(ethHeaderSize-1, 0), make([]byte, HeaderSize-2), make([]byte, 1), tso} {
		if err := b.peer.WritePacket([][]byte{p}); err != nil {
			t.Fatal(err)
		}
	}
	good := packet(100, 3)
	if err := b.peer.WritePacket([][]byte{good}); err != nil {
		t.Fatal(err)
	}
	b.received(posted, b.waitUsed(rxQueue, 1), withNumBuffers(good, 1))
	if st := b.d.Stats(); st.RxPackets != 1 || st.RxDropped != 4 {
		t.Errorf("stats %+v", st)
	}
}

// TestDetachReturnsBuffers: detaching while a packet waits for buffers
// drops it and gives the buffers back unused, so that the device can be
// captured.
func TestDetachReturnsBuffers(t *testing.T) {
	b := newBench(t, true, featMrgRxbuf, true)
	posted := b.postRx(pages(2)...)
	if err := b.peer.WritePacket([][]byte{packet(10000, 0)}); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the device to take the buffers", func() bool { return b.stashLen() == 2 })
	if l := b.d.Detach(); l != Link(b.link) {
		t.Fatalf("Detach returned %v", l)
	}
	used := b.waitUsed(rxQueue, 2)
	for i, u := range used {
		if u.len != 0 || u.id != uint32(posted[i].head) {
			t.Errorf("used %v, want the posted chains with nothing written", used)
		}
	}
	if _, err := b.d.SaveState(); err != nil {
		t.Errorf("SaveState after Detach: %v", err)
	}
	if st := b.d.Stats(); st != (Stats{RxDropped: 1}) {
		t.Errorf("stats %+v", st)
	}
}

// TestAttachWhileStarted: a link attached to a live device is read, one
// detached is not, and another can be attached after.
func TestAttachWhileStarted(t *testing.T) {
	b := newBench(t, false, featMrgRxbuf, true)
	posted := b.postRx(pages(8)...)
	for round := range 2 {
		link, peer := socketPair(t)
		if err := b.d.Attach(link); err != nil {
			t.Fatal(err)
		}
		p := packet(300, byte(round))
		if err := peer.WritePacket([][]byte{p}); err != nil {
			t.Fatal(err)
		}
		b.received(posted, b.waitUsed(rxQueue, 1), withNumBuffers(p, 1))
		b.d.Detach()
		// Nothing reads a detached link.
		if err := peer.WritePacket([][]byte{p}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, maxPacket)
		link.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := link.ReadPacket(buf); err != nil || n != len(p) {
			t.Fatalf("the packet sent after Detach: %d bytes, %v", n, err)
		}
	}
	if n := b.ft.changes.Load(); n != 4 {
		t.Errorf("%d configuration changes, want 4", n)
	}
}

// TestStop: Stop ends the receive goroutine wherever it is, and returns
// only once it has ended.
func TestStop(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(b *bench)
	}{
		{"reading", func(b *bench) {}},
		{"waiting for buffers", func(b *bench) {
			if err := b.peer.WritePacket([][]byte{packet(100, 0)}); err != nil {
				b.t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}},
		{"after the guest broke the queue", func(b *bench) {
			b.postRx([]int{0})
			if err := b.peer.WritePacket([][]byte{packet(100, 0)}); err != nil {
				b.t.Fatal(err)
			}
			b.waitFor("the device to break", func() bool { return b.ft.err != nil })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBench(t, true, featMrgRxbuf, true)
			tc.setup(b)
			b.d.ctl.Lock()
			r := b.d.rd
			b.d.ctl.Unlock()
			if r == nil {
				t.Fatal("no receive goroutine")
			}
			stopped := make(chan struct{})
			go func() {
				b.stop()
				close(stopped)
			}()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatal("Stop did not return")
			}
			select {
			case <-r.done:
			default:
				t.Fatal("Stop returned before the receive goroutine ended")
			}
			// The link is still attached, for the next Start.
			var st [1]byte
			b.d.ReadConfig(cfgStatus, st[:])
			if st[0] != statusLinkUp {
				t.Error("the link went down with Stop")
			}
		})
	}
}

// TestRestart: after a reset the device receives again on the same link.
func TestRestart(t *testing.T) {
	b := newBench(t, true, featMrgRxbuf, true)
	b.stop()
	b.g = newGuest(t)
	b.ft = &fakeTransport{queues: b.g.queues()}
	b.d.Start(virtio.FeatureVersion1, b.ft) // without mergeable buffers now
	posted := b.postRx([]int{2048})
	p := packet(1000, 4)
	if err := b.peer.WritePacket([][]byte{p}); err != nil {
		t.Fatal(err)
	}
	b.received(posted, b.waitUsed(rxQueue, 1), withNumBuffers(p, 1))
}

// errLink fails every read.
type errLink struct {
	sinkLink
	reads atomic.Int32
}

func (l *errLink) ReadPacket([]byte) (int, error) {
	l.reads.Add(1)
	return 0, errors.New("link gone")
}

// TestReadError: a link that fails is logged once and not read again.
func TestReadError(t *testing.T) {
	b := newBench(t, false, 0, true)
	l := &errLink{}
	if err := b.d.Attach(l); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-b.logs:
		if !strings.Contains(err.Error(), "link gone") {
			t.Errorf("logged %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing logged")
	}
	time.Sleep(20 * time.Millisecond)
	if n := l.reads.Load(); n != 1 {
		t.Errorf("%d reads of a failed link, want 1", n)
	}
	b.stop()
}

// offloadLink records the offloads it is told.
type offloadLink struct {
	*packetFile
	mu  sync.Mutex
	got []Offloads
}

func (l *offloadLink) SetOffloads(o Offloads) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, o)
	return nil
}

func TestOffloads(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
		want     Offloads
	}{
		{"none", 0, Offloads{}},
		{"checksum", featGuestCsum, Offloads{Checksum: true}},
		{"all", featGuestCsum | featGuestTSO4 | featGuestTSO6 | featMrgRxbuf, Offloads{true, true, true}},
		{"TSO without checksum", featGuestTSO4 | featGuestTSO6, Offloads{}},
		{"host offloads only", featCsum | featHostTSO4 | featHostTSO6, Offloads{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, attachFirst := range []bool{true, false} {
				b := newBench(t, false, 0, false)
				link, _ := socketPair(t)
				l := &offloadLink{packetFile: link}
				if attachFirst {
					b.d.Attach(l)
				}
				b.d.Start(tc.features, b.ft)
				if !attachFirst {
					b.d.Attach(l)
				}
				l.mu.Lock()
				if len(l.got) != 1 || l.got[0] != tc.want {
					t.Errorf("attached first %v: offloads set %+v, want %+v", attachFirst, l.got, tc.want)
				}
				l.mu.Unlock()
				b.stop()
			}
		})
	}
}

func TestFixHeader(t *testing.T) {
	all := Offloads{true, true, true}
	for _, tc := range []struct {
		name      string
		o         Offloads
		flags     byte
		gso       byte
		frame     int
		ok        bool
		wantFlags byte
	}{
		{"plain", Offloads{}, 0, gsoNone, 60, true, 0},
		{"data valid without GUEST_CSUM", Offloads{}, flagDataValid, gsoNone, 60, true, 0},
		{"data valid", all, flagDataValid, gsoNone, 60, true, flagDataValid},
		{"needs checksum", all, flagNeedsCsum, gsoNone, 60, true, flagNeedsCsum},
		{"unknown flag bits", all, 0xfc | flagNeedsCsum, gsoNone, 60, true, flagNeedsCsum},
		{"TSO4", all, flagNeedsCsum, gsoTCPv4, 60, true, flagNeedsCsum},
		{"TSO6", all, flagNeedsCsum, gsoTCPv6, 60, true, flagNeedsCsum},
		{"TSO4 not accepted", Offloads{Checksum: true, TSO6: true}, flagNeedsCsum, gsoTCPv4, 60, false, 0},
		{"TSO6 not accepted", Offloads{Checksum: true, TSO4: true}, flagNeedsCsum, gsoTCPv6, 60, false, 0},
		{"UDP fragmentation", all, flagNeedsCsum, 3, 60, false, 0},
		{"UDP segmentation", all, flagNeedsCsum, 5, 60, false, 0},
		{"ECN", all, flagNeedsCsum, gsoTCPv4 | 0x80, 60, false, 0},
		{"shorter than an Ethernet header", all, 0, gsoNone, ethHeaderSize - 1, false, 0},
		{"just an Ethernet header", all, 0, gsoNone, ethHeaderSize, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := packet(tc.frame, 0)
			p[hdrFlags], p[hdrGSOType] = tc.flags, tc.gso
			binary.LittleEndian.PutUint16(p[hdrCsumStart:], 14)
			binary.LittleEndian.PutUint16(p[hdrCsumOffset:], 6)
			if ok := fixHeader(p, tc.o); ok != tc.ok {
				t.Fatalf("fixHeader: %v, want %v", ok, tc.ok)
			}
			if tc.ok && p[hdrFlags] != tc.wantFlags {
				t.Errorf("flags %#x, want %#x", p[hdrFlags], tc.wantFlags)
			}
		})
	}
}

// sum16 is the ones' complement sum of b, folded.
func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return s
}

// TestFinishChecksum: a UDP packet whose checksum the guest did not
// accept to complete arrives with it complete; one whose checksum field
// lies past its end is dropped.
func TestFinishChecksum(t *testing.T) {
	for _, payload := range []int{0, 1, 2, 33, 1000} {
		p := packet(14+20+8+payload, byte(payload))
		f := p[HeaderSize:]
		ip := f[14:]
		ip[0], ip[9] = 0x45, 17
		copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		udp := ip[20:]
		udpLen := 8 + payload
		binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
		// The partial checksum: the pseudo-header's sum.
		pseudo := append(append([]byte{}, ip[12:20]...), 0, 17, byte(udpLen>>8), byte(udpLen))
		binary.BigEndian.PutUint16(udp[6:], uint16(sum16(pseudo)))
		p[hdrFlags] = flagNeedsCsum
		binary.LittleEndian.PutUint16(p[hdrCsumStart:], 14+20)
		binary.LittleEndian.PutUint16(p[hdrCsumOffset:], 6)
		if !fixHeader(p, Offloads{}) {
			t.Fatalf("payload %d: dropped", payload)
		}
		if p[hdrFlags] != 0 {
			t.Errorf("payload %d: flags %#x", payload, p[hdrFlags])
		}
		if s := sum16(append(pseudo, udp[:udpLen]...)); s != 0xffff {
			t.Errorf("payload %d: the packet's checksum does not verify (sum %#x)", payload, s)
		}
	}
	p := packet(60, 0)
	p[hdrFlags] = flagNeedsCsum
	binary.LittleEndian.PutUint16(p[hdrCsumStart:], 50)
	binary.LittleEndian.PutUint16(p[hdrCsumOffset:], 9)
	if fixHeader(p, Offloads{}) {
		t.Error("a checksum field past the frame was accepted")
	}
}

// FuzzReceive offers packets of arbitrary sizes to arbitrary receive
// chains: no panic, no write past the chains' buffers (they are bounded
// by guest memory), and every packet delivered, dropped or waiting.
func FuzzReceive(f *testing.F) {
	f.Add([]byte{0, 0, 1, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 2, 0, 0, 0}, []byte{0, 0, 0, 0}, true, uint16(100))
	f.Add([]byte{0, 0, 1, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 3, 0, 1, 0}, []byte{0, 0, 1, 0}, false, uint16(2000))
	f.Fuzz(func(t *testing.T, descs []byte, heads []byte, mrg bool, size uint16) {
		mem := make(ram, 0x30000)
		r := &ring{mem: mem, size: 16, desc: 0x1000, avail: 0x2000, used: 0x3000}
		copy(mem[r.desc:r.desc+16*uint64(r.size)], descs)
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
		sizes := []int{HeaderSize + ethHeaderSize + int(size)%MaxFrameSize, HeaderSize + ethHeaderSize, maxPacket}
		for _, n := range sizes {
			p := packet(n-HeaderSize, 1)
			res, err := d.deliver(q, p, mrg)
			if err != nil {
				if !errors.Is(err, virtio.ErrBadChain) {
					t.Fatalf("deliver: %v", err)
				}
				return
			}
			if res == noRoom {
				break
			}
		}
		st := d.Stats()
		used := r.takeUsed()
		if st.RxPackets == 0 && len(used) != 0 {
			t.Errorf("%d chains used for no packet", len(used))
		}
		var written uint64
		for _, u := range used {
			written += uint64(u.len)
		}
		if written != st.RxBytes+HeaderSize*st.RxPackets {
			t.Errorf("%d bytes written, %d counted", written, st.RxBytes+HeaderSize*st.RxPackets)
		}
	})
}
