package pci

import (
	"bytes"
	"encoding/binary"
	"testing"
)

const (
	testWindowBase = 0xe0000000
	testWindowSize = 0x100000
)

type access struct {
	bar   int
	off   uint64
	write bool
}

// recorder is a BARHandler that logs accesses and reads as its BAR number.
type recorder struct{ got []access }

func (r *recorder) ReadBAR(bar int, off uint64, data []byte) {
	r.got = append(r.got, access{bar, off, false})
	for i := range data {
		data[i] = byte(bar)
	}
}

func (r *recorder) WriteBAR(bar int, off uint64, data []byte) {
	r.got = append(r.got, access{bar, off, true})
}

func TestWindow(t *testing.T) {
	r := newRig(t)
	h := NewHost(testWindowBase, testWindowSize, func(err error) { t.Log(err) })
	rec := &recorder{}
	if err := h.Attach(2, r.e, rec); err != nil {
		t.Fatal(err)
	}
	w := h.Window()
	read := func(off uint64) byte {
		b := []byte{0}
		w.Read(off, b)
		return b[0]
	}
	if read(0) != 0xff || w.Decoded() != 0 {
		t.Fatal("an unplaced BAR decodes")
	}
	if err := h.Place(2, 0, testWindowBase+0x2000); err != nil {
		t.Fatal(err)
	}
	if err := h.Place(2, 1, testWindowBase+0x8000); err != nil {
		t.Fatal(err)
	}
	if err := h.Place(2, 3, 0x1000); err == nil {
		t.Error("an I/O BAR was placed in the memory window")
	}
	if err := h.Place(2, 0, testWindowBase+0x2100); err == nil {
		t.Error("a misaligned BAR was placed")
	}
	if got := read(0x2ffc); got != 0 {
		t.Errorf("BAR 0 reads %#x", got)
	}
	if got := read(0x8010); got != 1 {
		t.Errorf("BAR 1 reads %#x", got)
	}
	w.Write(0x8010, []byte{1, 2, 3, 4})
	if want := []access{{0, 0xffc, false}, {1, 0x10, false}, {1, 0x10, true}}; !equal(rec.got, want) {
		t.Errorf("accesses %v, want %v", rec.got, want)
	}
	if read(0x3000) != 0xff {
		t.Error("the byte after BAR 0 decodes")
	}
	// An access straddling the end of a BAR is not decoded.
	b := make([]byte, 4)
	w.Read(0x2ffe, b)
	if !bytes.Equal(b, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("straddling read: %x", b)
	}

	// The guest moves BAR 0 onto BAR 1: neither decodes.
	r.h = h
	r.write32Slot(2, OffBAR0, testWindowBase+0x8000)
	if w.Decoded() != 0 {
		t.Errorf("%d BARs decode after an overlap", w.Decoded())
	}
	// Outside the window: BAR 1 decodes, BAR 0 does not.
	r.write32Slot(2, OffBAR0, 0x10000)
	if w.Decoded() != 1 || read(0x8000) != 1 {
		t.Errorf("after moving BAR 0 out: %d decoded", w.Decoded())
	}
	// Memory decoding off: nothing decodes.
	r.write32Slot(2, OffCommand, 0)
	if w.Decoded() != 0 || read(0x8000) != 0xff {
		t.Error("BARs decode with memory decoding off")
	}
}

func equal(a, b []access) bool {
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

func (r *rig) write32Slot(slot int, reg uint8, v uint32) {
	r.sel(slot, 0, reg)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.h.DataWindow().Write(0, b[:])
}

func TestSetConfig(t *testing.T) {
	r := newRig(t)
	r.write32(OffBAR0, 0xe0001000)
	r.write32(OffCommand, CommandMemory|CommandMaster)
	saved := r.e.Config()

	fresh := newRig(t)
	if err := fresh.e.SetConfig(saved); err != nil {
		t.Fatal(err)
	}
	if fresh.e.BARAddress(0) != 0xe0001000 || fresh.e.Command() != CommandMemory|CommandMaster {
		t.Errorf("restored BAR %#x, command %#x", fresh.e.BARAddress(0), fresh.e.Command())
	}
	for _, tc := range []struct {
		name string
		off  int
		v    byte
	}{{"device ID", OffDevice, 0x41}, {"BAR type", OffBAR0 + 4, 0}, {"capability pointer", OffCapPtr, 0x50}, {"MSI-X table size", capStart + 2, 9}} {
		bad := append([]byte(nil), saved...)
		bad[tc.off] = tc.v
		if err := newRig(t).e.SetConfig(bad); err == nil {
			t.Errorf("%s: a saved space from another device was restored", tc.name)
		}
	}
	if err := fresh.e.SetConfig(saved[:100]); err == nil {
		t.Error("a short space was restored")
	}
}

func TestWindowOnRemapAndDecodedAt(t *testing.T) {
	r := newRig(t)
	h := NewHost(testWindowBase, testWindowSize, func(err error) { t.Log(err) })
	if err := h.Attach(2, r.e, &recorder{}); err != nil {
		t.Fatal(err)
	}
	w := h.Window()
	remaps := 0
	w.OnRemap(func() {
		remaps++
		w.DecodedAt(2, 0) // the callback may look at the window
	})
	if _, ok := w.DecodedAt(2, 0); ok {
		t.Error("an unplaced BAR is decoded")
	}
	if err := h.Place(2, 0, testWindowBase+0x2000); err != nil {
		t.Fatal(err)
	}
	if a, ok := w.DecodedAt(2, 0); !ok || a != testWindowBase+0x2000 {
		t.Errorf("BAR 0 decoded at %#x (%v), want %#x", a, ok, testWindowBase+0x2000)
	}
	if _, ok := w.DecodedAt(3, 0); ok {
		t.Error("an empty slot is decoded")
	}
	r.h = h
	r.write32Slot(2, OffBAR0, 0x10000) // outside the window
	if _, ok := w.DecodedAt(2, 0); ok {
		t.Error("a BAR outside the window is decoded")
	}
	if remaps < 2 {
		t.Errorf("%d remap callbacks, want one per change", remaps)
	}
}
