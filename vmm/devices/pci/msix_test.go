package pci

import (
	"encoding/binary"
	"testing"
)

type msi struct{ lo, hi, data uint32 }

type sink struct{ got []msi }

func (s *sink) SignalMSI(lo, hi, data uint32) error {
	s.got = append(s.got, msi{lo, hi, data})
	return nil
}

// msixRig is an endpoint with a 4-vector MSI-X table in BAR 0.
type msixRig struct {
	e    *Endpoint
	m    *MSIX
	s    *sink
	cap  uint8
	errs []error
}

func newMSIXRig(t testing.TB) *msixRig {
	r := &msixRig{s: &sink{}}
	e, err := NewEndpoint(Header{Vendor: 0x1af4, Device: 0x1044}, [6]BAR{{Size: 0x1000}}, []Capability{MSIXCapability(4, 0, 0, 0, 0x800)})
	if err != nil {
		t.Fatal(err)
	}
	r.e = e
	r.cap, _ = e.Capability(CapMSIX)
	control := func() uint16 {
		var b [2]byte
		e.ReadConfig(r.cap+2, b[:])
		return binary.LittleEndian.Uint16(b[:])
	}
	if r.m, err = NewMSIX(4, r.s, control, func(err error) { r.errs = append(r.errs, err) }); err != nil {
		t.Fatal(err)
	}
	e.OnWrite = func(uint8, int) { r.m.Update() }
	return r
}

func (r *msixRig) control(v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	r.e.WriteConfig(r.cap+2, b[:])
}

func (r *msixRig) entry(v int, lo, data uint32, masked bool) {
	var b [16]byte
	binary.LittleEndian.PutUint32(b[:], lo)
	binary.LittleEndian.PutUint32(b[8:], data)
	if masked {
		b[12] = 1
	}
	for i := 0; i < 16; i += 4 {
		r.m.WriteTable(uint64(v*16+i), b[i:i+4])
	}
}

func TestMSIX(t *testing.T) {
	r := newMSIXRig(t)
	// Disabled: nothing is delivered, nothing pends.
	r.entry(1, msiAddressBase, 0x41, false)
	r.m.Notify(1)
	if len(r.s.got) != 0 {
		t.Fatal("delivered while MSI-X is disabled")
	}
	r.control(msixCtrlEnable)
	r.m.Notify(1)
	if len(r.s.got) != 1 || r.s.got[0] != (msi{msiAddressBase, 0, 0x41}) {
		t.Fatalf("delivered %+v", r.s.got)
	}
	// A masked vector pends, shows in the PBA, and goes on unmask.
	r.entry(2, msiAddressBase+0x1000, 0x42, true)
	r.m.Notify(2)
	var pba [8]byte
	r.m.ReadPBA(0, pba[:])
	if len(r.s.got) != 1 || binary.LittleEndian.Uint64(pba[:]) != 1<<2 {
		t.Fatalf("masked vector: delivered %d, PBA %#x", len(r.s.got), pba)
	}
	r.entry(2, msiAddressBase+0x1000, 0x42, false)
	if len(r.s.got) != 2 || r.s.got[1].data != 0x42 {
		t.Fatalf("unmasking did not deliver: %+v", r.s.got)
	}
	// The function mask holds everything until it is cleared.
	r.control(msixCtrlEnable | msixCtrlMask)
	r.m.Notify(1)
	if len(r.s.got) != 2 {
		t.Fatal("delivered under the function mask")
	}
	r.control(msixCtrlEnable)
	if len(r.s.got) != 3 {
		t.Fatal("clearing the function mask did not deliver the pending vector")
	}
	// An address outside the local APIC window is refused and reported.
	r.entry(3, 0xdead0000, 0x43, false)
	r.m.Notify(3)
	if len(r.s.got) != 3 || len(r.errs) != 1 {
		t.Errorf("bad address: delivered %d, errors %v", len(r.s.got), r.errs)
	}
	// Vector control keeps only its mask bit; odd accesses read ones.
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 0xffffffff)
	r.m.WriteTable(12, b[:])
	r.m.ReadTable(12, b[:])
	if binary.LittleEndian.Uint32(b[:]) != 1 {
		t.Errorf("vector control reads %#x", b)
	}
	one := []byte{0}
	r.m.ReadTable(1, one)
	if one[0] != 0xff {
		t.Errorf("byte read of the table: %#x", one[0])
	}
	r.m.ReadTable(64, b[:]) // past 4 entries
	if binary.LittleEndian.Uint32(b[:]) != 0xffffffff {
		t.Errorf("read past the table: %#x", b)
	}
	r.m.Notify(99) // no such vector: ignored
	if _, err := NewMSIX(0, r.s, nil, nil); err == nil {
		t.Error("a table of 0 vectors was made")
	}
}

// FuzzMSIX drives the table, the control bits and notifications: nothing
// panics, and every delivered message has an x86 MSI address.
func FuzzMSIX(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0xe0, 0xfe, 0, 2, 0, 0x80, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newMSIXRig(t)
		for len(ops) >= 7 {
			off, kind := uint64(ops[0]), ops[1]
			data := ops[2:6]
			ops = ops[7:]
			switch kind % 4 {
			case 0:
				r.m.WriteTable(off, data[:4])
			case 1:
				r.m.WriteTable(off, append(append([]byte(nil), data...), data...))
			case 2:
				r.control(binary.LittleEndian.Uint16(data))
			case 3:
				r.m.Notify(int(data[0] % 8))
			}
		}
		for _, m := range r.s.got {
			if m.hi != 0 || m.lo < msiAddressBase || m.lo > msiAddressLimit {
				t.Fatalf("delivered to %#x_%08x", m.hi, m.lo)
			}
		}
	})
}

func TestMSIXState(t *testing.T) {
	r := newMSIXRig(t)
	r.control(msixCtrlEnable | msixCtrlMask)
	r.entry(2, 0xfee00000, 0x41, false)
	r.m.Notify(2) // function-masked: pending
	saved := r.m.State()

	fresh := newMSIXRig(t)
	if err := fresh.m.SetState(saved); err != nil {
		t.Fatal(err)
	}
	fresh.control(msixCtrlEnable) // unmasking the function delivers it
	if len(fresh.s.got) != 1 || fresh.s.got[0].data != 0x41 {
		t.Errorf("restored pending vector delivered %v", fresh.s.got)
	}
	bad := r.m.State()
	bad.Table[2*16+12] = 0x3
	if err := newMSIXRig(t).m.SetState(bad); err == nil {
		t.Error("reserved vector-control bits were restored")
	}
	bad = r.m.State()
	bad.Pending[0] = 1 << 9
	if err := newMSIXRig(t).m.SetState(bad); err == nil {
		t.Error("a pending bit past the table was restored")
	}
	bad = r.m.State()
	bad.Table = bad.Table[:16]
	if err := newMSIXRig(t).m.SetState(bad); err == nil {
		t.Error("a table of another size was restored")
	}
}
