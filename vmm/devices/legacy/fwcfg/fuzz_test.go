package fwcfg

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// input hands out the fuzzer's bytes, zeros once they run out.
type input struct{ b []byte }

func (in *input) u8() byte {
	if len(in.b) == 0 {
		return 0
	}
	v := in.b[0]
	in.b = in.b[1:]
	return v
}

func (in *input) u16() uint16 { return uint16(in.u8()) | uint16(in.u8())<<8 }
func (in *input) u32() uint32 { return uint32(in.u16()) | uint32(in.u16())<<16 }

// Fuzz memory: 1 KiB of RAM at 0x1000, in a 64 KiB space the fuzzer's
// addresses cover, so that they often lie in it, around it and across
// its edges.
const (
	fuzzBase = 0x1000
	fuzzSize = 0x400
)

var fuzzKeys = []uint16{KeySignature, KeyID, KeyFileDir, KeyFileFirst, KeyFileFirst + 1, KeyFileFirst + 2, KeyNbCPUs, KeyE820Table, 0x1234}

// FuzzDMA drives random selections, data register reads, access structures
// and DMA register writes against a small memory. It checks that nothing
// panics and that a transfer writes guest memory only within the control
// word of its access structure and the range the structure names, and not
// at all if the structure is not in RAM.
func FuzzDMA(f *testing.F) {
	seed := func(ops ...[]byte) []byte { return bytes.Join(ops, nil) }
	le16 := func(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
	le32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	access := func(at uint16, flags, key byte, length uint16, addr uint16) []byte {
		return seed([]byte{2}, le16(at), []byte{flags, key}, le16(length), []byte{0}, le16(addr))
	}
	huge := func(at uint16, flags, key byte, which byte, addr uint16) []byte {
		return seed([]byte{2}, le16(at), []byte{flags, key}, le16(0), []byte{0xfd + which}, le16(addr))
	}
	start := func(at uint16) []byte { return seed([]byte{3}, le32(0), le16(at)) }
	f.Add(seed(access(0x1000, ctlSelect|ctlRead, 3, 16, 0x1100), start(0x1000)))
	f.Add(seed(access(0x1000, ctlSelect|ctlSkip, 5, 3, 0), start(0x1000), access(0x1010, ctlRead, 0, 400, 0x1100), start(0x1010)))
	f.Add(seed(access(0x13f8, ctlSelect|ctlRead, 2, 64, 0x1200), start(0x13f8)))
	f.Add(seed(huge(0x1000, ctlSelect|ctlRead, 3, 2, 0x1100), start(0x1000)))
	f.Add(seed(huge(0x1000, ctlSelect|ctlRead, 3, 0, 0x1100), start(0x1000)))
	f.Add(seed(access(0x1000, ctlSelect|ctlWrite, 4, 4, 0x1100), start(0x1000)))
	f.Add(seed(access(0x1000, ctlSelect|ctlRead, 8, 8, 0x13fc), start(0x1000)))
	f.Add(seed([]byte{0}, le16(KeyFileFirst+2), []byte{1, 200}, access(0x1000, ctlRead, 0, 200, 0x1100), start(0x1000)))
	f.Add(seed([]byte{4, 0, 8}, le32(0), le32(0x1000)))

	f.Fuzz(func(t *testing.T, data []byte) {
		mem := newMem(fuzzBase, fuzzSize)
		d := New(mem, func(error) {})
		for i, n := range []int{5, 300, 0} {
			if err := d.AddFile(string(rune('a'+i)), bytes.Repeat([]byte{byte(i + 1)}, n)); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.SetCPUs(2, 4); err != nil {
			t.Fatal(err)
		}
		in := &input{data}
		for steps := 0; len(in.b) > 0 && steps < 64; steps++ {
			switch in.u8() % 6 {
			case 0: // select
				d.Ports().Write(portSelector, binary.LittleEndian.AppendUint16(nil, in.u16()))
			case 1: // read the data register
				var b [1]byte
				for range in.u8() {
					d.Ports().Read(portData, b[:])
				}
			case 2: // an access structure in RAM
				at := uint64(in.u16())
				control := uint32(in.u8()) & 0x1f
				if control&ctlSelect != 0 {
					control |= uint32(fuzzKeys[int(in.u8())%len(fuzzKeys)]) << 16
				}
				// Mostly short lengths; now and then the bound, just past
				// it, or 4 GiB.
				length := uint32(in.u16())
				switch n := in.u8(); n {
				case 0xfd, 0xfe, 0xff:
					length = []uint32{MaxItemSize, MaxItemSize + 1, 0xffffffff}[n-0xfd]
				}
				addr := uint64(in.u16())
				if at >= fuzzBase && at+16 <= fuzzBase+fuzzSize {
					s := mem.buf[at-fuzzBase:]
					binary.BigEndian.PutUint32(s, control)
					binary.BigEndian.PutUint32(s[4:], length)
					binary.BigEndian.PutUint64(s[8:], addr)
				}
			case 3: // start a transfer: high half, then low half
				high := in.u32() & 1 // 0, or an address past 4 GiB
				low := uint32(in.u16())
				dmaWrite(t, d, mem, dmaHigh, binary.BigEndian.AppendUint32(nil, high))
				dmaWrite(t, d, mem, dmaLow, binary.BigEndian.AppendUint32(nil, low))
			case 4: // any write to the DMA register
				offset := uint64(in.u8() % 8)
				size := []int{1, 2, 4, 8}[in.u8()%4]
				if offset+uint64(size) > 8 {
					offset = 0
				}
				b := make([]byte, size)
				for i := range b {
					b[i] = in.u8()
				}
				if size == 8 {
					b[0], b[1], b[2], b[3] = 0, 0, 0, b[3]&1
					b[4], b[5] = 0, 0
				}
				dmaWrite(t, d, mem, offset, b)
			case 5: // any port access
				offset := uint64(in.u8() % 2)
				size := 1 + int(in.u8()%2)
				if offset+uint64(size) > 2 {
					size = 1
				}
				b := make([]byte, size)
				if in.u8()&1 == 0 {
					d.Ports().Read(offset, b)
				} else {
					b[0] = in.u8()
					d.Ports().Write(offset, b)
				}
				var sig [8]byte
				d.DMA().Read(0, sig[:])
				if string(sig[:]) != "QEMU CFG" {
					t.Fatalf("DMA register reads %q", sig)
				}
			}
		}
	})
}

// dmaWrite writes the DMA register and checks that guest memory changed
// only where the transfer it may start was allowed to write.
func dmaWrite(t *testing.T, d *Device, mem *fakeMem, offset uint64, b []byte) {
	t.Helper()
	var allowed []span
	var gpa uint64
	triggers := false
	switch {
	case offset == dmaLow && len(b) == 4:
		gpa = uint64(d.State().DMAHigh)<<32 | uint64(binary.BigEndian.Uint32(b))
		triggers = true
	case offset == dmaHigh && len(b) == 8:
		gpa = binary.BigEndian.Uint64(b)
		triggers = true
	}
	var acc [16]byte
	if triggers && mem.ReadAt(acc[:], gpa) == nil {
		allowed = append(allowed,
			span{gpa, 4},
			span{binary.BigEndian.Uint64(acc[8:]), uint64(binary.BigEndian.Uint32(acc[4:]))})
	}
	before := bytes.Clone(mem.buf)
	mem.writes = nil
	d.DMA().Write(offset, b)
	for _, w := range mem.writes {
		ok := false
		for _, a := range allowed {
			ok = ok || a.contains(w)
		}
		if !ok {
			t.Fatalf("DMA write at %d of % x (access at %#x, allowed %v) wrote %#x bytes at %#x", offset, b, gpa, allowed, w.n, w.addr)
		}
	}
	for i := range before {
		if before[i] == mem.buf[i] {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a.contains(span{fuzzBase + uint64(i), 1})
		}
		if !ok {
			t.Fatalf("byte at %#x changed outside %v", fuzzBase+i, allowed)
		}
	}
	if triggers && d.State().DMAHigh != 0 {
		t.Fatal("the DMA address is not 0 after a transfer")
	}
}
