package pci

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// cfgAddr is the address register value for bus 0, device dev, register reg.
func cfgAddr(dev, fn int, reg uint8) uint32 {
	return addrEnable | uint32(dev)<<addrDevShift | uint32(fn)<<addrFnShift | uint32(reg)
}

type rig struct {
	h    *Host
	e    *Endpoint
	bars map[int]uint64
	cmds []uint16
}

func newRig(t testing.TB) *rig {
	bars := [6]BAR{
		{Size: 0x1000}, // 32-bit memory
		{Size: 0x4000, Is64: true, Prefetchable: true}, // 64-bit, with slot 2
		{},
		{Size: 0x20, IO: true},
	}
	msix := Capability{ID: CapMSIX, Body: make([]byte, 10), Writable: []byte{0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0}}
	vendor := Capability{ID: CapVendor, Body: []byte{14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}}
	e, err := NewEndpoint(Header{Vendor: 0x1af4, Device: 0x1042, Revision: 1, Class: 0x010000, SubsystemVendor: 0x1af4, Subsystem: 2, IntPin: 1},
		bars, []Capability{msix, vendor, vendor})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{h: NewHost(testWindowBase, testWindowSize, func(err error) { t.Log(err) }), e: e, bars: map[int]uint64{}}
	e.OnBAR = func(i int, a uint64) { r.bars[i] = a }
	e.OnCommand = func(c uint16) { r.cmds = append(r.cmds, c) }
	if err := r.h.Attach(3, e, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) sel(dev, fn int, reg uint8) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], cfgAddr(dev, fn, reg))
	r.h.AddressRegister().Write(0, b[:])
}

func (r *rig) read32(reg uint8) uint32 {
	r.sel(3, 0, reg)
	var b [4]byte
	r.h.DataWindow().Read(0, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (r *rig) write32(reg uint8, v uint32) {
	r.sel(3, 0, reg)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.h.DataWindow().Write(0, b[:])
}

func TestConfigMechanism(t *testing.T) {
	r := newRig(t)
	if got := r.read32(OffVendor); got != 0x10421af4 {
		t.Errorf("vendor/device %#x", got)
	}
	// Byte and word accesses inside the window reach reg + offset.
	r.sel(3, 0, OffVendor)
	var w [2]byte
	r.h.DataWindow().Read(2, w[:])
	if binary.LittleEndian.Uint16(w[:]) != 0x1042 {
		t.Errorf("word at window offset 2: %#x", w)
	}
	for _, tc := range []struct {
		name    string
		dev, fn int
		enable  bool
	}{{"empty slot", 4, 0, true}, {"function 1", 3, 1, true}, {"enable bit clear", 3, 0, false}} {
		a := cfgAddr(tc.dev, tc.fn, 0)
		if !tc.enable {
			a &^= addrEnable
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], a)
		r.h.AddressRegister().Write(0, b[:])
		r.h.DataWindow().Read(0, b[:])
		if binary.LittleEndian.Uint32(b[:]) != 0xffffffff {
			t.Errorf("%s reads %#x, want all ones", tc.name, b)
		}
	}
	// The address register keeps only its defined bits; byte probes miss it.
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 0xffffffff)
	r.h.AddressRegister().Write(0, b[:])
	r.h.AddressRegister().Read(0, b[:])
	if got := binary.LittleEndian.Uint32(b[:]); got != 0x80fffffc {
		t.Errorf("address register reads back %#x", got)
	}
	one := []byte{1}
	r.h.AddressRegister().Write(3, one)
	r.h.AddressRegister().Read(3, one)
	if one[0] != 0xff {
		t.Errorf("byte read of the address register: %#x", one[0])
	}
	if err := r.h.Attach(3, r.e, nil); err == nil {
		t.Error("a slot was attached twice")
	}
}

func TestBARs(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		name       string
		reg        uint8
		sized, low uint32 // after writing all ones; the flag bits
	}{
		{"32-bit memory", OffBAR0, 0xfffff000, 0},
		{"64-bit low", OffBAR0 + 4, 0xffffc00c, 0xc},
		{"64-bit high", OffBAR0 + 8, 0xffffffff, 0},
		{"I/O", OffBAR0 + 12, 0xffffffe1, 1},
		{"slot 4, unused", OffBAR0 + 16, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := r.read32(tc.reg)
			if old&0xf != tc.low {
				t.Errorf("flags %#x, want %#x", old&0xf, tc.low)
			}
			r.write32(tc.reg, 0xffffffff)
			if got := r.read32(tc.reg); got != tc.sized {
				t.Errorf("sizing reads %#x, want %#x", got, tc.sized)
			}
		})
	}
	r.write32(OffBAR0, 0xfebf1234) // unaligned: the low bits are dropped
	if got := r.e.BARAddress(0); got != 0xfebf1000 || r.bars[0] != 0xfebf1000 {
		t.Errorf("BAR 0 at %#x (callback %#x), want 0xfebf1000", got, r.bars[0])
	}
	r.write32(OffBAR0+4, 0xe0000000)
	r.write32(OffBAR0+8, 0x1)
	if got := r.e.BARAddress(1); got != 0x1_e000_0000 {
		t.Errorf("64-bit BAR at %#x", got)
	}
	r.write32(OffBAR0+12, 0xc041)
	if got := r.e.BARAddress(3); got != 0xc040 {
		t.Errorf("I/O BAR at %#x", got)
	}
}

func TestReadOnlyFields(t *testing.T) {
	r := newRig(t)
	before := map[uint8]uint32{}
	for _, reg := range []uint8{OffVendor, OffRevision &^ 3, OffHeaderType &^ 3, OffSubsysVendor, OffCapPtr, OffIntLine} {
		before[reg] = r.read32(reg)
		r.write32(reg, 0xa5a5a5a5)
	}
	for reg, v := range before {
		got := r.read32(reg)
		if reg == OffIntLine {
			// Only the interrupt line byte is writable.
			if got != v&^0xff|0xa5 {
				t.Errorf("interrupt line dword %#x, want %#x", got, v&^0xff|0xa5)
			}
			continue
		}
		if got != v {
			t.Errorf("read-only dword at %#x changed from %#x to %#x", reg, v, got)
		}
	}
	// Command: only the defined bits; the callback sees the change.
	r.write32(OffCommand, 0xffff)
	if got := r.e.Command(); got != commandWritable {
		t.Errorf("command %#x, want %#x", got, commandWritable)
	}
	if len(r.cmds) != 1 || r.cmds[0] != commandWritable {
		t.Errorf("command callbacks %v", r.cmds)
	}
	// Status has the capability list bit, which the guest cannot clear.
	if got := r.read32(OffCommand) >> 16; got&StatusCapList == 0 {
		t.Errorf("status %#x lacks the capability list bit", got)
	}
}

func TestCapabilities(t *testing.T) {
	r := newRig(t)
	var ids []uint8
	for off, n := uint8(r.read32(OffCapPtr)), 0; off != 0; n++ {
		if n > 48 || off < capStart || off%4 != 0 {
			t.Fatalf("capability list broken at %#x", off)
		}
		v := r.read32(off)
		ids = append(ids, uint8(v))
		off = uint8(v >> 8)
	}
	if len(ids) != 3 || ids[0] != CapMSIX || ids[1] != CapVendor || ids[2] != CapVendor {
		t.Errorf("capability IDs %#x", ids)
	}
	off, ok := r.e.Capability(CapMSIX)
	if !ok {
		t.Fatal("no MSI-X capability")
	}
	// Message control: only enable and function mask (bits 15:14) are writable.
	r.write32(off, 0xffff_ffff)
	if got := r.read32(off) >> 16; got != 0xc000 {
		t.Errorf("MSI-X message control %#x, want 0xc000", got)
	}
	if _, err := NewEndpoint(Header{}, [6]BAR{}, []Capability{{ID: 1, Body: make([]byte, 200)}}); err == nil {
		t.Error("capabilities larger than the space were accepted")
	}
}

func TestNewEndpointRefuses(t *testing.T) {
	for name, bars := range map[string][6]BAR{
		"size not a power of two": {{Size: 0x3000}},
		"tiny memory BAR":         {{Size: 8}},
		"huge I/O BAR":            {{Size: 0x1000, IO: true}},
		"64-bit in the last slot": {5: {Size: 0x1000, Is64: true}},
		"64-bit overlapping":      {{Size: 0x1000, Is64: true}, {Size: 0x1000}},
		"32-bit over 2 GiB":       {{Size: 1 << 32}},
	} {
		if _, err := NewEndpoint(Header{}, bars, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzConfigWrites drives the address register and the data window with
// arbitrary accesses: nothing panics, the identity never changes, and BARs
// stay aligned to their sizes.
func FuzzConfigWrites(f *testing.F) {
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 4, 0, 0x04, 7, 0, 0, 0, 4, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRig(t)
		for len(ops) >= 7 {
			reg, kind, off, size := ops[0], ops[1], uint64(ops[2]&7), int([]int{1, 2, 4, 3}[ops[3]&3])
			data := append([]byte(nil), ops[4:4+min(size, 3)]...)
			for len(data) < size {
				data = append(data, 0xff)
			}
			ops = ops[7:]
			switch kind % 4 {
			case 0:
				r.sel(int(kind>>2)&0x1f, int(kind>>7), reg)
			case 1:
				r.h.DataWindow().Write(off, data)
			case 2:
				r.h.DataWindow().Read(off, data)
			case 3:
				r.h.AddressRegister().Write(off, data)
			}
		}
		if got := r.read32(OffVendor); got != 0x10421af4 {
			t.Fatalf("identity changed to %#x", got)
		}
		for i, size := range map[int]uint64{0: 0x1000, 1: 0x4000, 3: 0x20} {
			if a := r.e.BARAddress(i); a%size != 0 {
				t.Fatalf("BAR %d at %#x, not aligned to %#x", i, a, size)
			}
		}
	})
}

func TestAddRegisters(t *testing.T) {
	valid := []Register{
		{Off: 0x59, Value: make([]byte, 7), Writable: []byte{0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33}},
		{Off: 0x72, Value: []byte{0x02}},
	}
	bad := []struct {
		name string
		regs []Register
	}{
		{"in the header", []Register{{Off: 0x3c, Value: []byte{0}}}},
		{"past the end", []Register{{Off: 0xfe, Value: []byte{0, 0, 0}}}},
		{"empty", []Register{{Off: 0x60}}},
		{"mask size", []Register{{Off: 0x60, Value: []byte{0, 0}, Writable: []byte{0xff}}}},
		{"overlap", []Register{{Off: 0x60, Value: []byte{0, 0}}, {Off: 0x61, Value: []byte{0}}}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEndpoint(Header{Vendor: 0x8086, Device: 0x1237}, [6]BAR{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.AddRegisters(tc.regs...); err == nil {
				t.Error("accepted")
			}
		})
	}
	e, err := NewEndpoint(Header{Vendor: 0x8086, Device: 0x1237}, [6]BAR{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AddRegisters(valid...); err != nil {
		t.Fatal(err)
	}
	e.WriteConfig(0x5c, []byte{0xff, 0xff, 0xff, 0xff})
	e.WriteConfig(0x72, []byte{0xff})
	got := make([]byte, 4)
	e.ReadConfig(0x5c, got)
	if want := []byte{0x33, 0x33, 0x33, 0x33}; !bytes.Equal(got, want) {
		t.Errorf("PAM after writing ones: % x, want % x", got, want)
	}
	e.ReadConfig(0x72, got[:1])
	if got[0] != 0x02 {
		t.Errorf("read-only register = %#x, want 0x02", got[0])
	}
	withCaps, err := NewEndpoint(Header{}, [6]BAR{}, []Capability{{ID: CapVendor, Body: []byte{0}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := withCaps.AddRegisters(valid...); err == nil {
		t.Error("registers added to a function with capabilities")
	}
}
