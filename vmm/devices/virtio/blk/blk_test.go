package blk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// ram is guest memory for tests: n bytes from guest-physical 0.
type ram []byte

func (r ram) Slice(gpa, n uint64) ([]byte, error) {
	if gpa > uint64(len(r)) || n > uint64(len(r))-gpa {
		return nil, fmt.Errorf("%#x+%#x is not RAM", gpa, n)
	}
	return r[gpa : gpa+n : gpa+n], nil
}

// Guest memory layout of the test queue.
const (
	descAt  = 0x0000 // QueueSize descriptors
	availAt = 0x1000
	usedAt  = 0x2000
	bufAt   = 0x4000 // buffers and indirect tables from here

	descNext     = 1
	descWrite    = 2
	descIndirect = 4
)

// pattern is the initial content of byte off of a test image: no two
// nearby sectors alike, and no zero bytes.
func pattern(off int) byte { return byte(off*7+off>>9)%251 + 1 }

func patterned(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = pattern(i)
	}
	return b
}

// harness is a device on a patterned image, with a queue in guest memory
// that tests lay requests out in.
type harness struct {
	t     testing.TB
	path  string
	f     *os.File
	d     *Device
	r     ram
	q     *virtio.Queue
	ndesc int    // next free descriptor
	next  uint64 // next free byte of guest memory
	stale bool   // the requests laid out were served: start afresh
	logs  []error
}

func newHarness(t testing.TB, sectors int, opt Options) *harness {
	t.Helper()
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "disk.img")}
	if err := os.WriteFile(h.path, patterned(sectors*SectorSize), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if h.f, err = os.OpenFile(h.path, os.O_RDWR, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.f.Close() })
	if opt.Log == nil {
		opt.Log = func(err error) { h.logs = append(h.logs, err) }
	}
	if h.d, err = New(h.f, opt); err != nil {
		t.Fatal(err)
	}
	h.setupQueue(1 << 20)
	return h
}

func (h *harness) setupQueue(memSize int) {
	h.r = make(ram, memSize)
	h.q = &virtio.Queue{Size: QueueSize, Desc: descAt, Avail: availAt, Used: usedAt}
	if err := h.q.Enable(h.r); err != nil {
		h.t.Fatal(err)
	}
	h.ndesc, h.next, h.stale = 0, bufAt, false
}

func (h *harness) alloc(n int) uint64 {
	a := h.next
	h.next = (h.next + uint64(n) + 15) &^ 15
	if h.next > uint64(len(h.r)) {
		h.t.Fatalf("test guest memory exhausted")
	}
	return a
}

// cut splits total bytes into buffers of the given sizes, the rest in a
// last one; no sizes is one buffer (none for 0 bytes).
func cut(total int, sizes []int) []int {
	var out []int
	for _, s := range sizes {
		s = min(s, total)
		out = append(out, s)
		total -= s
	}
	if total > 0 {
		out = append(out, total)
	}
	return out
}

// pending is a request laid out in guest memory.
type pending struct {
	h    *harness
	head uint16
	wr   [][]byte // the writable buffers
}

type buf struct {
	data  []byte
	n     int
	write bool
}

// add lays out a request: the readable stream rd cut into buffers of
// sizes rs, and wlen writable bytes cut into ws; with indirect, the
// chain is one indirect descriptor.
func (h *harness) add(rd []byte, rs []int, wlen int, ws []int, indirect bool) *pending {
	if h.stale {
		h.ndesc, h.next, h.stale = 0, bufAt, false
	}
	var bufs []buf
	pos := 0
	for _, n := range cut(len(rd), rs) {
		bufs = append(bufs, buf{data: rd[pos : pos+n], n: n})
		pos += n
	}
	for _, n := range cut(wlen, ws) {
		bufs = append(bufs, buf{n: n, write: true})
	}
	p := &pending{h: h}
	var table []byte
	if indirect {
		at := h.alloc(16 * len(bufs))
		table = h.r[at : at+uint64(16*len(bufs))]
		p.head = uint16(h.ndesc)
		h.desc(h.r[descAt+16*h.ndesc:], at, uint32(len(table)), descIndirect, 0)
		h.ndesc++
	} else {
		if h.ndesc+len(bufs) > QueueSize {
			h.t.Fatalf("%d descriptors do not fit in the queue", len(bufs))
		}
		p.head = uint16(h.ndesc)
		table = h.r[descAt+16*h.ndesc:]
		h.ndesc += len(bufs)
	}
	for i, b := range bufs {
		at := h.alloc(b.n)
		copy(h.r[at:], b.data)
		flags, next := uint16(0), uint16(0)
		if i+1 < len(bufs) {
			flags = descNext
			next = uint16(i + 1)
			if !indirect {
				next += p.head
			}
		}
		if b.write {
			flags |= descWrite
			p.wr = append(p.wr, h.r[at:at+uint64(b.n)])
		}
		h.desc(table[16*i:], at, uint32(b.n), flags, next)
	}
	idx := binary.LittleEndian.Uint16(h.r[availAt+2:])
	binary.LittleEndian.PutUint16(h.r[availAt+4+2*int(idx%QueueSize):], p.head)
	binary.LittleEndian.PutUint16(h.r[availAt+2:], idx+1)
	return p
}

func (h *harness) desc(d []byte, addr uint64, n uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

func (h *harness) notify() error {
	h.stale = true
	return h.d.Notify(0, []*virtio.Queue{h.q})
}

func (h *harness) usedIdx() uint16 { return binary.LittleEndian.Uint16(h.r[usedAt+2:]) }

// used returns the used length of p, and whether it was returned.
func (p *pending) used() (uint32, bool) {
	r := p.h.r
	idx := p.h.usedIdx()
	for i := range uint16(QueueSize) {
		if i >= idx {
			break
		}
		e := r[usedAt+4+8*int((idx-1-i)%QueueSize):]
		if binary.LittleEndian.Uint32(e) == uint32(p.head) {
			return binary.LittleEndian.Uint32(e[4:]), true
		}
	}
	return 0, false
}

// written returns the writable stream.
func (p *pending) written() []byte { return bytes.Join(p.wr, nil) }

func (p *pending) status() byte {
	w := p.written()
	return w[len(w)-1]
}

// result is a served request.
type result struct {
	status byte
	data   []byte // the writable stream before the status
	used   uint32
}

// do serves one request.
func (h *harness) do(rd []byte, rs []int, wlen int, ws []int) result {
	h.t.Helper()
	p := h.add(rd, rs, wlen, ws, false)
	if err := h.notify(); err != nil {
		h.t.Fatalf("Notify: %v", err)
	}
	n, ok := p.used()
	if !ok {
		h.t.Fatal("the request was not returned")
	}
	w := p.written()
	return result{status: w[len(w)-1], data: w[:len(w)-1], used: n}
}

// image returns the image file's content.
func (h *harness) image() []byte {
	h.t.Helper()
	b, err := os.ReadFile(h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

func hdr(typ uint32, sector uint64) []byte {
	b := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(b, typ)
	binary.LittleEndian.PutUint32(b[4:], 0xdeadbeef) // reserved: ignored
	binary.LittleEndian.PutUint64(b[8:], sector)
	return b
}

func seg(sector uint64, num, flags uint32) []byte {
	b := make([]byte, segSize)
	binary.LittleEndian.PutUint64(b, sector)
	binary.LittleEndian.PutUint32(b[8:], num)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// sizes repeats the cycle until n sizes.
func sizes(n int, cycle ...int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = cycle[i%len(cycle)]
	}
	return out
}

func TestReadWrite(t *testing.T) {
	const sector, n = 3, 8 * SectorSize
	for _, tc := range []struct {
		name         string
		outRS, outWS []int // OUT: readable (header and data) and writable sizes
		inRS, inWS   []int // IN
		inExtra      int   // readable bytes after the IN header
		indirect     bool
	}{
		{name: "one descriptor each", outRS: []int{16}, inWS: []int{n}},
		{name: "header and data share a descriptor", outRS: nil, inWS: nil},
		{name: "header split inside its fields", outRS: []int{3, 5, 1, 7}, inRS: []int{2, 14}, inWS: []int{n}},
		{name: "data in many odd descriptors", outRS: sizes(120, 1, 7, 0, 100, 13, 511, 3), inWS: sizes(200, 1, 0, 19, 2, 77)},
		{name: "header shares the first data bytes", outRS: []int{16 + 100, 412, n - 512}, inWS: []int{511, 1, n - 512}},
		{name: "status shares the last data descriptor", outRS: []int{16}, inWS: []int{n / 2}},
		{name: "empty buffers after the status", outRS: []int{16, n, 0, 0}, outWS: []int{1, 0, 0}, inWS: []int{n + 1, 0, 0}},
		{name: "extra readable bytes on a read", outRS: []int{16}, inWS: []int{n}, inExtra: 100},
		{name: "indirect, more buffers than preadv takes", outRS: append([]int{16}, sizes(n/2, 2)...), inWS: sizes(n/2, 2), indirect: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 64, Options{})
			data := bytes.Repeat([]byte("0123456789abcdef"), n/16)
			data[0], data[n-1] = 0xfe, 0xef
			var p *pending
			if tc.indirect {
				h.setupQueue(4 << 20)
			}
			p = h.add(cat(hdr(typeOut, sector), data), tc.outRS, 1, tc.outWS, tc.indirect)
			if err := h.notify(); err != nil {
				t.Fatal(err)
			}
			if used, _ := p.used(); p.status() != statusOK || used != 1 {
				t.Fatalf("write: status %d, used %d", p.status(), used)
			}
			want := patterned(64 * SectorSize)
			copy(want[sector*SectorSize:], data)
			if !bytes.Equal(h.image(), want) {
				t.Fatal("the image is not the one written")
			}

			rd := cat(hdr(typeIn, sector), bytes.Repeat([]byte{0x55}, tc.inExtra))
			p = h.add(rd, tc.inRS, n+1, tc.inWS, tc.indirect)
			if err := h.notify(); err != nil {
				t.Fatal(err)
			}
			w := p.written()
			if used, _ := p.used(); p.status() != statusOK || used != n+1 {
				t.Fatalf("read: status %d, used %d", p.status(), used)
			}
			if !bytes.Equal(w[:n], data) {
				t.Error("read back other data")
			}
			if len(h.logs) != 0 {
				t.Errorf("logged %v", h.logs)
			}
		})
	}
}

// TestNotifyDrains: one notification serves every available request.
func TestNotifyDrains(t *testing.T) {
	h := newHarness(t, 64, Options{})
	var ps []*pending
	for i := range 10 {
		ps = append(ps, h.add(cat(hdr(typeOut, uint64(i)), bytes.Repeat([]byte{byte(i)}, SectorSize)), nil, 1, nil, false))
	}
	ps = append(ps, h.add(hdr(typeIn, 0), nil, 10*SectorSize+1, nil, false))
	if err := h.notify(); err != nil {
		t.Fatal(err)
	}
	if h.usedIdx() != 11 {
		t.Fatalf("used index %d, want 11", h.usedIdx())
	}
	for i, p := range ps {
		if p.status() != statusOK {
			t.Errorf("request %d: status %d", i, p.status())
		}
	}
	w := ps[10].written()
	for i := range 10 {
		if !bytes.Equal(w[i*SectorSize:(i+1)*SectorSize], bytes.Repeat([]byte{byte(i)}, SectorSize)) {
			t.Errorf("sector %d not as written", i)
		}
	}
}

// TestStatus: requests refused with an error status, and the edges of the
// disk.
func TestStatus(t *testing.T) {
	const sectors = 64
	data := func(n int) []byte { return bytes.Repeat([]byte{0x42}, n) }
	for _, tc := range []struct {
		name     string
		ro       bool
		rd       []byte
		wlen     int
		status   byte
		used     uint32
		modifies bool // the image may change
	}{
		{name: "read of the last sectors", rd: hdr(typeIn, sectors-2), wlen: 1025, status: statusOK, used: 1025},
		{name: "read past the end", rd: hdr(typeIn, sectors-1), wlen: 1025, status: statusIOErr, used: 1},
		{name: "read starting past the end", rd: hdr(typeIn, sectors), wlen: 513, status: statusIOErr, used: 1},
		{name: "empty read at the end", rd: hdr(typeIn, sectors), wlen: 1, status: statusOK, used: 1},
		{name: "empty read past the end", rd: hdr(typeIn, sectors+1), wlen: 1, status: statusIOErr, used: 1},
		{name: "read at the largest sector", rd: hdr(typeIn, math.MaxUint64), wlen: 513, status: statusIOErr, used: 1},
		{name: "read whose byte offset overflows", rd: hdr(typeIn, 1<<55), wlen: 513, status: statusIOErr, used: 1},
		{name: "read whose end overflows", rd: hdr(typeIn, math.MaxUint64-1), wlen: 1025, status: statusIOErr, used: 1},
		{name: "read of 100 bytes", rd: hdr(typeIn, 0), wlen: 101, status: statusIOErr, used: 1},
		{name: "read of 513 bytes", rd: hdr(typeIn, 0), wlen: 514, status: statusIOErr, used: 1},
		{name: "write past the end", rd: cat(hdr(typeOut, sectors-1), data(1024)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write at the largest sector", rd: cat(hdr(typeOut, math.MaxUint64), data(512)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write whose end overflows", rd: cat(hdr(typeOut, math.MaxUint64/SectorSize), data(1024)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write of 511 bytes", rd: cat(hdr(typeOut, 0), data(511)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write of 600 bytes", rd: cat(hdr(typeOut, 0), data(600)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write of the last sector", rd: cat(hdr(typeOut, sectors-1), data(512)), wlen: 1, status: statusOK, used: 1, modifies: true},
		{name: "write with room before the status", rd: cat(hdr(typeOut, 0), data(512)), wlen: 8, status: statusOK, used: 1, modifies: true},
		{name: "unknown type", rd: hdr(3, 0), wlen: 513, status: statusUnsupp, used: 1},
		{name: "largest type", rd: hdr(math.MaxUint32, 0), wlen: 1, status: statusUnsupp, used: 1},
		{name: "flush", rd: hdr(typeFlush, 0), wlen: 1, status: statusOK, used: 1},
		{name: "read-only write", ro: true, rd: cat(hdr(typeOut, 0), data(512)), wlen: 1, status: statusIOErr, used: 1},
		{name: "read-only discard", ro: true, rd: cat(hdr(typeDiscard, 0), seg(0, 8, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "read-only write-zeroes", ro: true, rd: cat(hdr(typeWriteZeroes, 0), seg(0, 8, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "read-only read", ro: true, rd: hdr(typeIn, 0), wlen: 513, status: statusOK, used: 513},
		{name: "read-only flush", ro: true, rd: hdr(typeFlush, 0), wlen: 1, status: statusOK, used: 1},
		{name: "read-only get-id", ro: true, rd: hdr(typeGetID, 0), wlen: 21, status: statusOK, used: 21},
		{name: "discard with unmap", rd: cat(hdr(typeDiscard, 0), seg(0, 8, flagUnmap)), wlen: 1, status: statusUnsupp, used: 1},
		{name: "discard with an unknown flag", rd: cat(hdr(typeDiscard, 0), seg(0, 8, 0), seg(8, 8, 2)), wlen: 1, status: statusUnsupp, used: 1},
		{name: "write-zeroes with an unknown flag", rd: cat(hdr(typeWriteZeroes, 0), seg(0, 8, 1<<31)), wlen: 1, status: statusUnsupp, used: 1},
		{name: "discard of too many segments", rd: cat(hdr(typeDiscard, 0), bytes.Repeat(seg(0, 1, 0), maxDiscardSeg+1)), wlen: 1, status: statusUnsupp, used: 1},
		{name: "write-zeroes of too many segments", rd: cat(hdr(typeWriteZeroes, 0), bytes.Repeat(seg(0, 1, 0), maxWriteZeroesSeg+1)), wlen: 1, status: statusUnsupp, used: 1},
		{name: "discard of a partial segment", rd: cat(hdr(typeDiscard, 0), seg(0, 8, 0)[:12]), wlen: 1, status: statusIOErr, used: 1},
		{name: "discard of no segment", rd: hdr(typeDiscard, 0), wlen: 1, status: statusIOErr, used: 1},
		{name: "discard past the end", rd: cat(hdr(typeDiscard, 0), seg(0, 8, 0), seg(sectors-4, 8, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write-zeroes past the end", rd: cat(hdr(typeWriteZeroes, 0), seg(0, 8, 0), seg(sectors, 1, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write-zeroes whose end overflows", rd: cat(hdr(typeWriteZeroes, 0), seg(math.MaxUint64-1, 8, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "discard of too many sectors", rd: cat(hdr(typeDiscard, 0), seg(0, maxDiscardSectors+1, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "write-zeroes of too many sectors", rd: cat(hdr(typeWriteZeroes, 0), seg(0, math.MaxUint32, 0)), wlen: 1, status: statusIOErr, used: 1},
		{name: "discard of no sectors at the end", rd: cat(hdr(typeDiscard, 0), seg(sectors, 0, 0)), wlen: 1, status: statusOK, used: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, sectors, Options{ReadOnly: tc.ro})
			res := h.do(tc.rd, nil, tc.wlen, nil)
			if res.status != tc.status || res.used != tc.used {
				t.Errorf("status %d, used %d; want %d, %d", res.status, res.used, tc.status, tc.used)
			}
			if !tc.modifies && !bytes.Equal(h.image(), patterned(sectors*SectorSize)) {
				t.Error("the image changed")
			}
			if len(h.logs) != 0 {
				t.Errorf("logged %v", h.logs)
			}
		})
	}
}

func TestGetID(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   string
		wlen int
		ws   []int
		want string
	}{
		{name: "short ID is NUL-padded", id: "disk-7", wlen: 21, want: "disk-7" + strings.Repeat("\x00", 14)},
		{name: "ID of 20 bytes", id: "0123456789abcdefghij", wlen: 21, want: "0123456789abcdefghij"},
		{name: "empty ID", wlen: 21, want: strings.Repeat("\x00", 20)},
		{name: "room for less than the ID", id: "0123456789abcdefghij", wlen: 9, want: "01234567"},
		{name: "more room than the ID", id: "0123456789abcdefghij", wlen: 513, want: "0123456789abcdefghij"},
		{name: "ID across descriptors", id: "0123456789abcdefghij", wlen: 21, ws: []int{1, 4, 0, 10}, want: "0123456789abcdefghij"},
		{name: "room for the status only", id: "x", wlen: 1, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 8, Options{ID: tc.id})
			res := h.do(hdr(typeGetID, 0), nil, tc.wlen, tc.ws)
			if res.status != statusOK || res.used != uint32(len(tc.want)+1) {
				t.Errorf("status %d, used %d; want OK, %d", res.status, res.used, len(tc.want)+1)
			}
			if got := string(res.data[:len(tc.want)]); got != tc.want {
				t.Errorf("ID %q, want %q", got, tc.want)
			}
			if rest := res.data[len(tc.want):]; !bytes.Equal(rest, make([]byte, len(rest))) {
				t.Error("bytes past the ID were written")
			}
		})
	}
}

func TestFlush(t *testing.T) {
	h := newHarness(t, 8, Options{})
	h.do(cat(hdr(typeOut, 1), bytes.Repeat([]byte{9}, SectorSize)), nil, 1, nil)
	if res := h.do(hdr(typeFlush, 0), []int{4, 12}, 1, nil); res.status != statusOK || res.used != 1 {
		t.Fatalf("flush: status %d, used %d", res.status, res.used)
	}

	// A failed fdatasync: a pipe cannot be synced.
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	fd := h.d.fd
	h.d.fd = p[1]
	if res := h.do(hdr(typeFlush, 0), nil, 1, nil); res.status != statusIOErr {
		t.Fatalf("flush with fdatasync failing: status %d", res.status)
	}
	if len(h.logs) != 1 {
		t.Errorf("logged %v, want the failure", h.logs)
	}
	// Writes may have been lost: a flush may not succeed again.
	h.d.fd = fd
	if res := h.do(hdr(typeFlush, 0), nil, 1, nil); res.status != statusIOErr {
		t.Errorf("flush after a failure: status %d", res.status)
	}
	h.d.Reset()
	if res := h.do(hdr(typeFlush, 0), nil, 1, nil); res.status != statusIOErr {
		t.Errorf("flush after a failure and a reset: status %d", res.status)
	}
}

// TestIOErrors: errors from the image are IOERR, and logged.
func TestIOErrors(t *testing.T) {
	h := newHarness(t, 8, Options{})
	// The image shrinks under the device: a read inside the capacity
	// meets the end of the file.
	if err := h.f.Truncate(4 * SectorSize); err != nil {
		t.Fatal(err)
	}
	if res := h.do(hdr(typeIn, 2), nil, 4*SectorSize+1, nil); res.status != statusIOErr || res.used != 2*SectorSize+1 {
		t.Errorf("read past the end of the file: status %d, used %d", res.status, res.used)
	}
	// A write on a descriptor open read-only fails.
	ro, err := os.Open(h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	h.d.fd = int(ro.Fd())
	if res := h.do(cat(hdr(typeOut, 0), make([]byte, SectorSize)), nil, 1, nil); res.status != statusIOErr {
		t.Errorf("failing write: status %d", res.status)
	}
	if res := h.do(cat(hdr(typeWriteZeroes, 0), seg(0, 1, 0)), nil, 1, nil); res.status != statusIOErr {
		t.Errorf("failing write-zeroes: status %d", res.status)
	}
	if len(h.logs) != 3 {
		t.Errorf("logged %v, want 3 errors", h.logs)
	}
	for _, err := range h.logs {
		if !strings.Contains(err.Error(), h.path) {
			t.Errorf("%v does not name the image", err)
		}
	}
}

// punchWorks reports whether the file system of dir punches holes.
func punchWorks(t *testing.T, dir string) bool {
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{1}, 8192)); err != nil {
		t.Fatal(err)
	}
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096) == nil
}

func TestDiscardWriteZeroes(t *testing.T) {
	const sectors = 8192 // 4 MiB: write-zeroes by hand takes several writes
	type span struct{ sector, n int }
	for _, tc := range []struct {
		name     string
		typ      uint32
		segs     [][]byte
		setup    func(d *Device)
		zeros    []span
		maybeNot bool // a discard the file system may not honour
	}{
		{name: "discard", typ: typeDiscard, segs: [][]byte{seg(8, 8, 0)}, zeros: []span{{8, 8}}, maybeNot: true},
		{name: "discard of unaligned sectors", typ: typeDiscard, segs: [][]byte{seg(3, 5, 0)}, zeros: []span{{3, 5}}, maybeNot: true},
		{name: "discard of two segments and an empty one", typ: typeDiscard, segs: [][]byte{seg(0, 1, 0), seg(100, 0, 0), seg(sectors-16, 16, 0)}, zeros: []span{{0, 1}, {sectors - 16, 16}}, maybeNot: true},
		{name: "discard where holes cannot be punched", typ: typeDiscard, segs: [][]byte{seg(8, 8, 0)}, setup: func(d *Device) { d.noPunch = true }},
		{name: "write-zeroes", typ: typeWriteZeroes, segs: [][]byte{seg(1, 9, 0)}, zeros: []span{{1, 9}}},
		{name: "write-zeroes with unmap", typ: typeWriteZeroes, segs: [][]byte{seg(1, 9, flagUnmap), seg(40, 3, 0)}, zeros: []span{{1, 9}, {40, 3}}},
		{name: "write-zeroes without holes", typ: typeWriteZeroes, segs: [][]byte{seg(1, 9, flagUnmap)}, setup: func(d *Device) { d.noPunch = true }, zeros: []span{{1, 9}}},
		{name: "write-zeroes by writing", typ: typeWriteZeroes, segs: [][]byte{seg(5, 4096, flagUnmap), seg(sectors-3, 3, 0)},
			setup: func(d *Device) { d.noPunch, d.noZeroRange = true, true }, zeros: []span{{5, 4096}, {sectors - 3, 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, sectors, Options{})
			if tc.setup != nil {
				tc.setup(h.d)
			}
			rs := []int{16}
			for range tc.segs {
				rs = append(rs, 7, 9) // segments across descriptors
			}
			res := h.do(cat(hdr(tc.typ, 0), cat(tc.segs...)), rs, 1, nil)
			if res.status != statusOK || res.used != 1 {
				t.Fatalf("status %d, used %d", res.status, res.used)
			}
			want := patterned(sectors * SectorSize)
			if !tc.maybeNot || punchWorks(t, filepath.Dir(h.path)) {
				for _, z := range tc.zeros {
					clear(want[z.sector*SectorSize : (z.sector+z.n)*SectorSize])
				}
			}
			got := h.image()
			if len(got) != len(want) {
				t.Fatalf("the image is %d bytes, was %d", len(got), len(want))
			}
			if !bytes.Equal(got, want) {
				i := 0
				for got[i] == want[i] {
					i++
				}
				t.Errorf("the image differs from sector %d", i/SectorSize)
			}
			// The guest reads what the file holds.
			rd := h.do(hdr(typeIn, 0), nil, 16*SectorSize+1, nil)
			if rd.status != statusOK || !bytes.Equal(rd.data, want[:16*SectorSize]) {
				t.Error("a read does not see the zeros")
			}
			if len(h.logs) != 0 {
				t.Errorf("logged %v", h.logs)
			}
		})
	}
}

// TestBadChains: chains that cannot be answered break the queue, and are
// not returned; requests before them are served.
func TestBadChains(t *testing.T) {
	for _, tc := range []struct {
		name string
		rd   []byte
		rs   []int
		wlen int
		ws   []int
	}{
		{name: "no writable buffer", rd: hdr(typeIn, 0)},
		{name: "only empty writable buffers", rd: hdr(typeIn, 0), ws: []int{0, 0}},
		{name: "header of 15 bytes", rd: hdr(typeIn, 0)[:15], wlen: 513},
		{name: "header of 15 bytes in two buffers", rd: hdr(typeFlush, 0)[:15], rs: []int{8, 7}, wlen: 1},
		{name: "no readable buffer", wlen: 513},
		{name: "only empty readable buffers", rs: []int{0, 0, 0}, wlen: 1},
		{name: "nothing", rs: []int{0}, ws: []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 8, Options{})
			good := h.add(hdr(typeFlush, 0), nil, 1, nil, false)
			h.add(tc.rd, tc.rs, tc.wlen, tc.ws, false)
			after := h.add(hdr(typeFlush, 0), nil, 1, nil, false)
			err := h.notify()
			if !errors.Is(err, virtio.ErrBadChain) {
				t.Fatalf("Notify: %v, want ErrBadChain", err)
			}
			if h.usedIdx() != 1 {
				t.Errorf("used index %d, want 1", h.usedIdx())
			}
			if _, ok := good.used(); !ok || good.status() != statusOK {
				t.Error("the request before the broken one was not served")
			}
			if _, ok := after.used(); ok {
				t.Error("the request after the broken one was served")
			}
		})
	}
}

func TestConfig(t *testing.T) {
	le := binary.LittleEndian
	for _, ro := range []bool{false, true} {
		t.Run(fmt.Sprintf("read-only=%t", ro), func(t *testing.T) {
			h := newHarness(t, 1000, Options{ReadOnly: ro})
			d := h.d
			if d.Type() != virtio.TypeBlock || len(d.QueueSizes()) != 1 || d.QueueSizes()[0] != 256 {
				t.Errorf("type %d, queues %v", d.Type(), d.QueueSizes())
			}
			if d.Capacity() != 1000 || d.ReadOnly() != ro {
				t.Errorf("capacity %d, read-only %t", d.Capacity(), d.ReadOnly())
			}
			wantF := uint64(1<<2 | 1<<6 | 1<<9)
			if ro {
				wantF |= 1 << 5
			} else {
				wantF |= 1<<13 | 1<<14
			}
			if d.Features() != wantF {
				t.Errorf("features %#x, want %#x", d.Features(), wantF)
			}

			want := make([]byte, 64)
			le.PutUint64(want[0:], 1000) // capacity
			le.PutUint32(want[12:], 254) // seg_max
			le.PutUint32(want[20:], 512) // blk_size
			want[32] = 1                 // writeback
			le.PutUint16(want[34:], 1)   // num_queues
			if !ro {
				le.PutUint32(want[36:], 1<<22) // max_discard_sectors
				le.PutUint32(want[40:], 256)   // max_discard_seg
				le.PutUint32(want[44:], 8)     // discard_sector_alignment
				le.PutUint32(want[48:], 1<<16) // max_write_zeroes_sectors
				le.PutUint32(want[52:], 16)    // max_write_zeroes_seg
				want[56] = 1                   // write_zeroes_may_unmap
			}
			got := make([]byte, 64)
			d.ReadConfig(0, got)
			if !bytes.Equal(got, want) {
				t.Errorf("configuration\n%x, want\n%x", got, want)
			}
			want = append(want, make([]byte, 64)...)
			for _, size := range []int{1, 2, 4, 8, 3} {
				for off := range 100 {
					b := bytes.Repeat([]byte{0xcc}, size)
					d.ReadConfig(uint64(off), b)
					if !bytes.Equal(b, want[off:off+size]) {
						t.Errorf("%d bytes at %d: %x, want %x", size, off, b, want[off:off+size])
					}
				}
			}
			b := []byte{1, 2, 3, 4, 5, 6, 7, 8}
			d.ReadConfig(math.MaxUint64-3, b)
			if !bytes.Equal(b, make([]byte, 8)) {
				t.Errorf("read at the top of the space: %x", b)
			}
			d.WriteConfig(0, []byte{0xff, 0xff, 0xff, 0xff})
			d.WriteConfig(32, []byte{0})
			d.ReadConfig(0, got)
			if !bytes.Equal(got, want[:64]) {
				t.Error("a configuration write changed it")
			}
		})
	}
}

// TestTransport: the device behind the PCI transport.
func TestTransport(t *testing.T) {
	h := newHarness(t, 8, Options{})
	p, err := virtio.NewPCIDevice(h.d, h.r, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	p.ReadBAR(0, 0x2000, b) // the device configuration
	if binary.LittleEndian.Uint64(b) != 8 {
		t.Errorf("capacity %x through the transport", b)
	}
}

func TestState(t *testing.T) {
	h := newHarness(t, 16, Options{ID: "vol-1"})
	b, err := h.d.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s["capacity"] != float64(16) || s["read_only"] != false || s["id"] != "vol-1" {
		t.Errorf("saved %s", b)
	}
	for _, tc := range []struct {
		name    string
		sectors int
		opt     Options
		state   json.RawMessage
		ok      bool
	}{
		{name: "same disk", sectors: 16, opt: Options{ID: "vol-1"}, ok: true},
		{name: "same disk, other log", sectors: 16, opt: Options{ID: "vol-1", Log: func(error) {}}, ok: true},
		{name: "other capacity", sectors: 17, opt: Options{ID: "vol-1"}},
		{name: "read-only", sectors: 16, opt: Options{ID: "vol-1", ReadOnly: true}},
		{name: "other ID", sectors: 16, opt: Options{ID: "vol-2"}},
		{name: "no ID", sectors: 16},
		{name: "no state", sectors: 16, opt: Options{ID: "vol-1"}, state: json.RawMessage{}},
		{name: "not JSON", sectors: 16, opt: Options{ID: "vol-1"}, state: json.RawMessage(`{"capacity":`)},
		{name: "unknown field", sectors: 16, opt: Options{ID: "vol-1"}, state: json.RawMessage(`{"capacity":16,"read_only":false,"id":"vol-1","cache":"none"}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := newHarness(t, tc.sectors, tc.opt)
			st := b
			if tc.state != nil {
				st = tc.state
			}
			err := other.d.RestoreState(st)
			if tc.ok && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tc.ok {
				if err == nil {
					t.Error("restored onto another disk")
				} else if !strings.Contains(err.Error(), other.path) {
					t.Errorf("%v does not name the image", err)
				}
			}
		})
	}
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, size int, flag int) func(t *testing.T) *os.File {
		return func(t *testing.T) *os.File {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, flag, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}
	}
	for _, tc := range []struct {
		name string
		open func(t *testing.T) *os.File
		opt  Options
		ok   bool
	}{
		{name: "one sector", open: file("one.img", 512, os.O_RDWR), ok: true},
		{name: "read-only file, read-only disk", open: file("ro.img", 4096, os.O_RDONLY), opt: Options{ReadOnly: true}, ok: true},
		{name: "ID of 20 bytes", open: file("id20.img", 512, os.O_RDWR), opt: Options{ID: strings.Repeat("x", 20)}, ok: true},
		{name: "empty file", open: file("empty.img", 0, os.O_RDWR)},
		{name: "partial sector", open: file("partial.img", 1000, os.O_RDWR)},
		{name: "one byte short", open: file("short.img", 4095, os.O_RDWR)},
		{name: "ID of 21 bytes", open: file("id21.img", 512, os.O_RDWR), opt: Options{ID: strings.Repeat("x", 21)}},
		{name: "ID with a NUL", open: file("idnul.img", 512, os.O_RDWR), opt: Options{ID: "a\x00b"}},
		{name: "ID not UTF-8", open: file("idutf.img", 512, os.O_RDWR), opt: Options{ID: "\xff"}},
		{name: "read-only file, writable disk", open: file("rw.img", 512, os.O_RDONLY)},
		{name: "append mode", open: file("append.img", 512, os.O_RDWR|os.O_APPEND)},
		{name: "directory", open: func(t *testing.T) *os.File {
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}},
		{name: "character device", open: func(t *testing.T) *os.File {
			f, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
			if err != nil {
				t.Skip(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.open(t)
			d, err := New(f, tc.opt)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, capacity %d", d.Capacity())
			}
			if !strings.Contains(err.Error(), f.Name()) {
				t.Errorf("%v does not name the file", err)
			}
		})
	}
}

func TestClose(t *testing.T) {
	h := newHarness(t, 1, Options{})
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.f.Stat(); err == nil {
		t.Error("the file is still open")
	}
}

// FuzzRequests serves arbitrary chains: arbitrary readable bytes (header
// and payload) in buffers of arbitrary sizes, and arbitrary writable
// buffers. Notify must not panic, fail other than with ErrBadChain, or
// grow the image; a served request must have a valid status.
func FuzzRequests(f *testing.F) {
	const sectors = 8
	for _, s := range []struct {
		rd     []byte
		rs, ws []byte
		wlen   uint16
	}{
		{hdr(typeIn, 0), nil, nil, 513},
		{hdr(typeIn, 7), []byte{3}, []byte{1, 0, 200}, 1025},
		{cat(hdr(typeOut, 6), make([]byte, 1024)), []byte{16, 100}, nil, 1},
		{cat(hdr(typeOut, 7), make([]byte, 1024)), nil, nil, 1},
		{hdr(typeFlush, 0), nil, nil, 1},
		{hdr(typeGetID, 0), nil, []byte{5}, 21},
		{cat(hdr(typeDiscard, 0), seg(2, 4, 0), seg(7, 2, 0)), []byte{20}, nil, 1},
		{cat(hdr(typeWriteZeroes, 0), seg(0, 8, 1)), nil, nil, 1},
		{cat(hdr(typeWriteZeroes, 0), seg(math.MaxUint64, 8, 0)), nil, nil, 1},
		{hdr(typeIn, 0)[:10], nil, nil, 1},
		{hdr(typeIn, 0), nil, nil, 0},
	} {
		f.Add(s.rd, s.rs, s.ws, s.wlen)
	}
	h := newHarness(f, sectors, Options{ID: "fuzz"})
	f.Fuzz(func(t *testing.T, rd, rs, ws []byte, wlen uint16) {
		if len(rd) > 64<<10 || len(rs) > 100 || len(ws) > 100 {
			return
		}
		h.t, h.logs = t, nil
		h.setupQueue(256 << 10)
		toInts := func(b []byte) []int {
			if b == nil {
				return nil
			}
			out := make([]int, len(b))
			for i, x := range b {
				out[i] = int(x) * 8
			}
			return out
		}
		p := h.add(rd, toInts(rs), int(wlen%4096), toInts(ws), false)
		err := h.notify()
		if err != nil && !errors.Is(err, virtio.ErrBadChain) {
			t.Fatalf("Notify: %v", err)
		}
		fi, serr := h.f.Stat()
		if serr != nil {
			t.Fatal(serr)
		}
		if fi.Size() != sectors*SectorSize {
			t.Fatalf("the image is %d bytes", fi.Size())
		}
		if len(h.logs) != 0 {
			t.Fatalf("I/O errors: %v", h.logs)
		}
		used, ok := p.used()
		if ok != (err == nil) {
			t.Fatalf("returned %t, error %v", ok, err)
		}
		if ok {
			if s := p.status(); s > statusUnsupp {
				t.Fatalf("status %d", s)
			}
			if used == 0 || int(used) > len(p.written()) {
				t.Fatalf("used %d of %d writable bytes", used, len(p.written()))
			}
		}
	})
}

func BenchmarkSequentialRead(b *testing.B) {
	const sectors, chunk = 32768, 64 << 10 // a 16 MiB image, 64 KiB reads
	h := newHarness(b, sectors, Options{})
	h.setupQueue(4 << 20)
	b.SetBytes(chunk)
	sector := uint64(0)
	for b.Loop() {
		p := h.add(hdr(typeIn, sector), nil, chunk+1, sizes(16, 4096), false)
		if err := h.notify(); err != nil {
			b.Fatal(err)
		}
		if p.status() != statusOK {
			b.Fatal("read failed")
		}
		sector = (sector + chunk/SectorSize) % sectors
	}
}
