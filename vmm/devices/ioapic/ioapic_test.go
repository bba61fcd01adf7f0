package ioapic

import (
	"encoding/binary"
	"testing"
)

type sink struct {
	routes []Route
	fired  []int
}

func (s *sink) SetRoutes(r []Route) error { s.routes = append([]Route(nil), r...); return nil }
func (s *sink) Fire(pin int) error        { s.fired = append(s.fired, pin); return nil }

const msiBase = 0xfee00000

func reg(a *IOAPIC, r uint32) uint32 {
	w := make([]byte, 4)
	binary.LittleEndian.PutUint32(w, r)
	a.Write(offSelect, w)
	a.Read(offWindow, w)
	return binary.LittleEndian.Uint32(w)
}

func setReg(a *IOAPIC, r, v uint32) {
	w := make([]byte, 4)
	binary.LittleEndian.PutUint32(w, r)
	a.Write(offSelect, w)
	binary.LittleEndian.PutUint32(w, v)
	a.Write(offWindow, w)
}

func TestRegisters(t *testing.T) {
	a := New(&sink{}, msiBase, nil)
	if v := reg(a, regVersion); v != 0x170020 {
		t.Errorf("version register = %#x, want 0x170020 (24 pins, version 0x20)", v)
	}
	for pin := uint32(0); pin < Pins; pin++ {
		if v := reg(a, regRedir+2*pin); v&redirMasked == 0 {
			t.Errorf("pin %d not masked at reset: %#x", pin, v)
		}
	}
	setReg(a, regID, 0x05000000)
	if v := reg(a, regID); v != 0x05000000 {
		t.Errorf("ID = %#x", v)
	}
	// Remote IRR and delivery status are read-only.
	setReg(a, regRedir+2*3, 0x31|redirRemoteIRR|redirDelivStatus)
	if v := reg(a, regRedir+2*3); v != 0x31 {
		t.Errorf("redirection entry 3 = %#x, want 0x31", v)
	}
	setReg(a, regRedir+2*3+1, 0x02000000)
	if v := reg(a, regRedir+2*3+1); v != 0x02000000 {
		t.Errorf("redirection entry 3 high = %#x", v)
	}
	if v := reg(a, 0x99); v != 0 {
		t.Errorf("unknown register = %#x, want 0", v)
	}
}

func TestRoutes(t *testing.T) {
	s := &sink{}
	a := New(s, msiBase, nil)
	setReg(a, regRedir+2*4+1, 0x01000000)          // destination APIC 1
	setReg(a, regRedir+2*4, 0x41|redirLevel|1<<11) // vector 0x41, level, logical
	r := s.routes[4]
	if r.AddressLo != msiBase|1<<12|1<<2 || r.Data != 0x41|1<<15|1<<14 || r.Masked {
		t.Errorf("route of pin 4 = %+v", r)
	}
	if !s.routes[5].Masked {
		t.Error("pin 5 should still be masked")
	}
}

func TestDelivery(t *testing.T) {
	for _, tc := range []struct {
		name  string
		entry uint32
		steps func(a *IOAPIC)
		want  int // interrupts fired on pin 2
	}{
		{"edge fires on rising edges", 0x30, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.SetLevel(2, true)
			a.SetLevel(2, false)
			a.SetLevel(2, true)
		}, 2},
		{"masked never fires", 0x30 | redirMasked, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.SetLevel(2, false)
			a.SetLevel(2, true)
		}, 0},
		{"level fires once until EOI", 0x30 | redirLevel, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.SetLevel(2, true)
		}, 1},
		{"level fires again after EOI while high", 0x30 | redirLevel, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.EOI(0x30)
		}, 2},
		{"level quiet after EOI once low", 0x30 | redirLevel, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.SetLevel(2, false)
			a.EOI(0x30)
		}, 1},
		{"EOI of another vector does nothing", 0x30 | redirLevel, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.EOI(0x31)
		}, 1},
		{"EOI register", 0x30 | redirLevel, func(a *IOAPIC) {
			a.SetLevel(2, true)
			a.Write(offEOI, []byte{0x30, 0, 0, 0})
		}, 2},
		{"out-of-range pins are ignored", 0x30, func(a *IOAPIC) {
			a.SetLevel(-1, true)
			a.SetLevel(Pins, true)
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sink{}
			a := New(s, msiBase, nil)
			setReg(a, regRedir+2*2, tc.entry)
			tc.steps(a)
			if len(s.fired) != tc.want {
				t.Errorf("fired %d times (%v), want %d", len(s.fired), s.fired, tc.want)
			}
		})
	}
}

// Unmasking a level-triggered pin whose line is already high delivers it.
func TestUnmaskDeliversPendingLevel(t *testing.T) {
	s := &sink{}
	a := New(s, msiBase, nil)
	setReg(a, regRedir+2*9, 0x40|redirLevel|redirMasked)
	a.SetLevel(9, true)
	if len(s.fired) != 0 {
		t.Fatal("masked pin fired")
	}
	setReg(a, regRedir+2*9, 0x40|redirLevel)
	if len(s.fired) != 1 || s.fired[0] != 9 {
		t.Fatalf("fired %v after unmask, want [9]", s.fired)
	}
}
