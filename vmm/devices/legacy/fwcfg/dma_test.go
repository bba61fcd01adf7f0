package fwcfg

import (
	"bytes"
	"encoding/binary"
	"testing"
)

const (
	accAddr = memBase + 0x100  // where the tests put FWCfgDmaAccess
	dstAddr = memBase + 0x1000 // where they read items to
	fill    = 0xaa             // what guest memory holds before a transfer
)

const fileData = "0123456789abcdef"

func dmaRig(t *testing.T) *rig {
	r := newRig(t)
	if err := r.d.AddFile("f", []byte(fileData)); err != nil { // key 0x20
		t.Fatal(err)
	}
	if err := r.d.AddUint16(KeyNbCPUs, 2); err != nil {
		t.Fatal(err)
	}
	for i := range r.mem.buf {
		r.mem.buf[i] = fill
	}
	return r
}

func sel(key uint16) uint32 { return ctlSelect | uint32(key)<<16 }

// unchanged checks that guest memory differs from before only within
// allowed, and that every write the device tried lay within allowed.
func unchanged(t *testing.T, r *rig, before []byte, allowed ...span) {
	t.Helper()
	for _, w := range r.mem.writes {
		ok := false
		for _, a := range allowed {
			ok = ok || a.contains(w)
		}
		if !ok {
			t.Errorf("write of %#x bytes at %#x outside %v", w.n, w.addr, allowed)
		}
	}
	for i := range before {
		if before[i] == r.mem.buf[i] {
			continue
		}
		gpa := r.mem.base + uint64(i)
		ok := false
		for _, a := range allowed {
			ok = ok || a.contains(span{gpa, 1})
		}
		if !ok {
			t.Errorf("byte at %#x changed from %#02x to %#02x", gpa, before[i], r.mem.buf[i])
			return
		}
	}
}

func TestDMA(t *testing.T) {
	zeros := func(n int) string { return string(make([]byte, n)) }
	tests := []struct {
		name    string
		pre     func(t *testing.T, r *rig) // before the transfer
		control uint32
		length  uint32
		addr    uint64
		ctl     uint32 // control word afterwards
		data    string // at addr afterwards; "" if untouched
		next    string // what the data register reads next
	}{
		{name: "select and read", control: sel(0x20) | ctlRead, length: 16, addr: dstAddr, data: fileData, next: "\x00"},
		{name: "select and read part", control: sel(0x20) | ctlRead, length: 4, addr: dstAddr, data: "0123", next: "45"},
		{name: "read numeric item", control: sel(KeyNbCPUs) | ctlRead, length: 2, addr: dstAddr, data: "\x02\x00", next: "\x00"},
		{name: "ports and DMA share the offset",
			pre:     func(t *testing.T, r *rig) { r.sel(0x20); r.read(2) },
			control: ctlRead, length: 3, addr: dstAddr, data: "234", next: "5"},
		{name: "skip then read",
			pre: func(t *testing.T, r *rig) {
				if c := r.dma(t, accAddr, sel(0x20)|ctlSkip, 10, 0); c != 0 {
					t.Fatalf("skip: control %#x", c)
				}
			},
			control: ctlRead, length: 3, addr: dstAddr, data: "abc", next: "d"},
		{name: "select and skip", control: sel(0x20) | ctlSkip, length: 12, addr: dstAddr, next: "cdef\x00"},
		{name: "read past the end", control: sel(0x20) | ctlRead, length: 20, addr: dstAddr, data: fileData + zeros(4), next: "\x00"},
		{name: "skip past the end, then read",
			pre: func(t *testing.T, r *rig) {
				if c := r.dma(t, accAddr, sel(0x20)|ctlSkip, 1000, 0); c != 0 {
					t.Fatalf("skip: control %#x", c)
				}
			},
			control: ctlRead, length: 4, addr: dstAddr, data: zeros(4)},
		{name: "read takes precedence over write", control: sel(0x20) | ctlRead | ctlWrite | ctlSkip, length: 2, addr: dstAddr, data: "01", next: "2"},
		{name: "error bit in the request is ignored", control: sel(0x20) | ctlRead | ctlError, length: 2, addr: dstAddr, data: "01", next: "2"},
		{name: "zero length", control: sel(0x20) | ctlRead, length: 0, addr: dstAddr, next: "0"},
		{name: "zero length outside RAM", control: sel(0x20) | ctlRead, length: 0, addr: 0, next: "0"},
		{name: "select only", pre: func(t *testing.T, r *rig) { r.sel(KeySignature) }, control: sel(0x20), length: 8, addr: dstAddr, next: "01"},
		{name: "nothing", pre: func(t *testing.T, r *rig) { r.sel(0x20); r.read(1) }, control: 0, length: 8, addr: dstAddr, next: "1"},

		// Unknown items read as zeros, with the error bit.
		{name: "read unknown selector", control: sel(0x1234) | ctlRead, length: 8, addr: dstAddr, ctl: ctlError, data: zeros(8), next: "\x00"},
		{name: "read unknown current item", pre: func(t *testing.T, r *rig) { r.sel(0x8123) },
			control: ctlRead, length: 8, addr: dstAddr, ctl: ctlError, data: zeros(8)},
		{name: "zero-length read of unknown item", control: sel(0x1234) | ctlRead, addr: dstAddr, ctl: ctlError},
		{name: "skip unknown", control: sel(0x1234) | ctlSkip, length: 4, addr: dstAddr, ctl: ctlError},
		{name: "select unknown", control: sel(0x1234), length: 4, addr: dstAddr, ctl: ctlError, next: "\x00"},

		// Refused: nothing written but the control word.
		{name: "write", control: sel(0x20) | ctlWrite, length: 4, addr: dstAddr, ctl: ctlError, next: "0"},
		{name: "write at offset", pre: func(t *testing.T, r *rig) { r.sel(0x20); r.read(2) },
			control: ctlWrite, length: 2, addr: dstAddr, ctl: ctlError, next: "2"},
		{name: "write unknown", control: sel(0x1234) | ctlWrite, length: 4, addr: dstAddr, ctl: ctlError},
		{name: "target past RAM", control: sel(0x20) | ctlRead, length: 4, addr: memBase + memSize, ctl: ctlError, next: "0"},
		{name: "target straddles RAM's end", control: sel(0x20) | ctlRead, length: 8, addr: memBase + memSize - 4, ctl: ctlError, next: "0"},
		{name: "target straddles RAM's start", control: sel(0x20) | ctlRead, length: 8, addr: memBase - 4, ctl: ctlError, next: "0"},
		{name: "target below RAM", control: sel(0x20) | ctlRead, length: 4, addr: 0, ctl: ctlError, next: "0"},
		{name: "unknown item, target past RAM", control: sel(0x1234) | ctlRead, length: 4, addr: memBase + memSize, ctl: ctlError},
		{name: "4 GiB length", control: sel(0x20) | ctlRead, length: 0xffffffff, addr: dstAddr, ctl: ctlError, next: "0"},
		{name: "length just over the bound", control: sel(0x20) | ctlRead, length: MaxItemSize + 1, addr: memBase, ctl: ctlError, next: "0"},
		{name: "range wraps", control: sel(0x20) | ctlRead, length: 0x20, addr: 0xffff_ffff_ffff_fff0, ctl: ctlError, next: "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := dmaRig(t)
			if tc.pre != nil {
				tc.pre(t, r)
			}
			r.put(accAddr, tc.control, tc.length, tc.addr)
			before := bytes.Clone(r.mem.buf)
			ctl := r.start(accAddr)
			if ctl != tc.ctl {
				t.Errorf("control %#x, want %#x", ctl, tc.ctl)
			}
			allowed := []span{{accAddr, 4}}
			if tc.data != "" {
				allowed = append(allowed, span{tc.addr, uint64(len(tc.data))})
				got := make([]byte, len(tc.data))
				if err := r.mem.ReadAt(got, tc.addr); err != nil || string(got) != tc.data {
					t.Errorf("target holds %q (%v), want %q", got, err, tc.data)
				}
			}
			unchanged(t, r, before, allowed...)
			if tc.next != "" {
				if got := string(r.read(len(tc.next))); got != tc.next {
					t.Errorf("data register then reads %q, want %q", got, tc.next)
				}
			}
		})
	}
}

func TestDMAAccessOutsideRAM(t *testing.T) {
	for _, acc := range []uint64{0, memBase - 8, memBase + memSize - 8, memBase + memSize, 0xffff_ffff_ffff_fff8} {
		r := dmaRig(t)
		before := bytes.Clone(r.mem.buf)
		r.mem.writes = nil
		r.d.DMA().Write(dmaHigh, binary.BigEndian.AppendUint32(nil, uint32(acc>>32)))
		r.d.DMA().Write(dmaLow, binary.BigEndian.AppendUint32(nil, uint32(acc)))
		if len(r.mem.writes) != 0 || !bytes.Equal(before, r.mem.buf) {
			t.Errorf("access structure at %#x: wrote %v", acc, r.mem.writes)
		}
		if r.nlogs() != 1 {
			t.Errorf("access structure at %#x: %d reports", acc, r.nlogs())
		}
	}
}

func TestDMA64BitAddress(t *testing.T) {
	const base = 0x1_0000_0000
	r := &rig{mem: newMem(base, 0x1000)}
	r.d = New(r.mem, nil)
	put := func(off uint64, control, length uint32, addr uint64) {
		b := binary.BigEndian.AppendUint32(nil, control)
		b = binary.BigEndian.AppendUint32(b, length)
		b = binary.BigEndian.AppendUint64(b, addr)
		copy(r.mem.buf[off:], b)
	}
	ctl := func(off uint64) uint32 { return binary.BigEndian.Uint32(r.mem.buf[off:]) }

	// Two 32-bit halves, high first.
	put(0x10, sel(KeySignature)|ctlRead, 4, base+0x800)
	r.d.DMA().Write(dmaHigh, []byte{0, 0, 0, 1})
	r.d.DMA().Write(dmaLow, []byte{0, 0, 0, 0x10})
	if ctl(0x10) != 0 || string(r.mem.buf[0x800:0x804]) != "QEMU" {
		t.Fatalf("split write: control %#x, data %q", ctl(0x10), r.mem.buf[0x800:0x804])
	}

	// One 64-bit write.
	put(0x40, sel(KeyID)|ctlRead, 4, base+0x900)
	r.d.DMA().Write(dmaHigh, binary.BigEndian.AppendUint64(nil, base+0x40))
	if ctl(0x40) != 0 || binary.LittleEndian.Uint32(r.mem.buf[0x900:]) != 3 {
		t.Fatalf("64-bit write: control %#x, data % x", ctl(0x40), r.mem.buf[0x900:0x904])
	}

	// The address register is 0 after an operation: a low half alone
	// names an address below 4 GiB, not in this RAM.
	put(0x80, sel(KeySignature)|ctlRead, 4, base+0xa00)
	r.mem.writes = nil
	r.d.DMA().Write(dmaLow, []byte{0, 0, 0, 0x80})
	if len(r.mem.writes) != 0 || ctl(0x80) == 0 {
		t.Fatalf("high half was kept: writes %v", r.mem.writes)
	}
}
