package virtio

import (
	"encoding/binary"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
)

type msiSink struct{ data []uint32 }

func (s *msiSink) SignalMSI(lo, hi, data uint32) error {
	s.data = append(s.data, data)
	return nil
}

// driver is a minimal virtio-pci driver, as a guest's would act.
type driver struct {
	t    *testing.T
	d    *PCIDevice
	r    ram
	msi  *msiSink
	caps map[uint8]uint32 // cfg_type -> offset in BAR 0
}

func newDriver(t *testing.T) *driver {
	r := make(ram, 0x10000)
	s := &msiSink{}
	d, err := NewPCIDevice(Entropy{}, r, s, func(err error) { t.Logf("device: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	dr := &driver{t: t, d: d, r: r, msi: s, caps: map[uint8]uint32{}}
	// Walk the capability list for the virtio structures.
	var b [4]byte
	d.Endpoint.ReadConfig(pci.OffCapPtr, b[:1])
	for off := b[0]; off != 0; {
		var c [16]byte
		for i := 0; i < 16; i += 4 {
			d.Endpoint.ReadConfig(off+uint8(i), c[i:i+4])
		}
		if c[0] == pci.CapVendor {
			dr.caps[c[3]] = binary.LittleEndian.Uint32(c[8:])
		}
		off = c[1]
	}
	return dr
}

func (dr *driver) w(off uint64, size int, v uint64) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	dr.d.WriteBAR(0, off, b)
}

func (dr *driver) r8(off uint64) uint8 {
	b := []byte{0}
	dr.d.ReadBAR(0, off, b)
	return b[0]
}

func (dr *driver) common(field uint64) uint64 { return uint64(dr.caps[capCommon]) + field }

func (dr *driver) setup(descAddr uint64) {
	dr.w(dr.common(ccDeviceStatus), 1, StatusAcknowledge)
	dr.w(dr.common(ccDeviceStatus), 1, StatusAcknowledge|StatusDriver)
	dr.w(dr.common(ccDriverFeatureSelect), 4, 1)
	dr.w(dr.common(ccDriverFeature), 4, FeatureVersion1>>32)
	dr.w(dr.common(ccDeviceStatus), 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	if dr.r8(dr.common(ccDeviceStatus))&StatusFeaturesOK == 0 {
		dr.t.Fatal("FEATURES_OK did not stick")
	}
	// MSI-X: enable it, and point vector 1 at the local APIC window.
	capOff, _ := dr.d.Endpoint.Capability(pci.CapMSIX)
	dr.d.Endpoint.WriteConfig(capOff+2, []byte{0, 0x80})
	dr.d.WriteBAR(0, msixTableOff+16, binary.LittleEndian.AppendUint32(nil, 0xfee00000))
	dr.d.WriteBAR(0, msixTableOff+24, binary.LittleEndian.AppendUint32(nil, 0x61))
	dr.d.WriteBAR(0, msixTableOff+28, []byte{0, 0, 0, 0}) // unmask
	dr.w(dr.common(ccQueueSelect), 2, 0)
	dr.w(dr.common(ccQueueSize), 2, 8)
	dr.w(dr.common(ccQueueMSIXVector), 2, 1)
	dr.w(dr.common(ccQueueDesc), 4, descAddr)
	dr.w(dr.common(ccQueueDriver), 4, availAt)
	dr.w(dr.common(ccQueueDevice), 4, usedAt)
	dr.w(dr.common(ccQueueEnable), 2, 1)
	dr.w(dr.common(ccDeviceStatus), 1, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
}

func TestTransport(t *testing.T) {
	dr := newDriver(t)
	for _, typ := range []uint8{capCommon, capNotify, capISR, capDevice} {
		if _, ok := dr.caps[typ]; !ok {
			t.Fatalf("no virtio capability of type %d", typ)
		}
	}
	var id [4]byte
	dr.d.Endpoint.ReadConfig(pci.OffVendor, id[:])
	if binary.LittleEndian.Uint32(id[:]) != 0x10441af4 {
		t.Errorf("vendor/device %#x, want virtio-rng 0x1044", id)
	}
	dr.setup(descAt)
	if dr.r8(dr.common(ccDeviceStatus)) != 15 {
		t.Fatalf("status %#x after setup", dr.r8(dr.common(ccDeviceStatus)))
	}
	dr.r.desc(0, 0x4000, 64, descWrite, 0)
	dr.r.offer(8, 0)
	dr.w(uint64(dr.caps[capNotify]), 2, 0) // kick queue 0
	if got := binary.LittleEndian.Uint16(dr.r[usedAt+2:]); got != 1 {
		t.Fatalf("used index %d after the kick", got)
	}
	if len(dr.msi.data) != 1 || dr.msi.data[0] != 0x61 {
		t.Errorf("interrupts %v, want vector 1's message", dr.msi.data)
	}
	if isr := dr.r8(uint64(dr.caps[capISR])); isr != 1 {
		t.Errorf("ISR %#x, want 1", isr)
	}
	if isr := dr.r8(uint64(dr.caps[capISR])); isr != 0 {
		t.Errorf("ISR %#x after a read, want 0", isr)
	}
	// A queue cannot be moved while enabled.
	dr.w(dr.common(ccQueueDesc), 4, 0x8000)
	b := make([]byte, 4)
	dr.d.ReadBAR(0, dr.common(ccQueueDesc), b)
	if binary.LittleEndian.Uint32(b) != descAt {
		t.Errorf("an enabled queue moved to %#x", b)
	}
	// Reset.
	dr.w(dr.common(ccDeviceStatus), 1, 0)
	if dr.r8(dr.common(ccDeviceStatus)) != 0 {
		t.Error("reset did not clear the status")
	}
}

// TestTransportBrokenQueue: rings outside guest memory put the device in
// the needs-reset state instead of mapping anything.
func TestTransportBrokenQueue(t *testing.T) {
	dr := newDriver(t)
	dr.setup(0xfff0) // the descriptor table would run past RAM
	if st := dr.r8(dr.common(ccDeviceStatus)); st&StatusNeedsReset == 0 {
		t.Fatalf("status %#x, want NEEDS_RESET", st)
	}
	dr.r.offer(8, 0)
	dr.w(uint64(dr.caps[capNotify]), 2, 0)
	if binary.LittleEndian.Uint16(dr.r[usedAt+2:]) != 0 {
		t.Error("a broken device processed a request")
	}
}

// FuzzTransport writes arbitrary values at arbitrary BAR offsets after a
// normal setup: nothing panics.
func FuzzTransport(f *testing.F) {
	f.Add([]byte{0x1c, 0x00, 2, 1, 0, 0, 0, 0, 0x00, 0x30, 2, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		dr := newDriver(t)
		dr.setup(descAt)
		for len(ops) >= 8 {
			off := uint64(binary.LittleEndian.Uint16(ops)) % BARSize
			size := []int{1, 2, 4, 8}[ops[2]&3]
			data := append([]byte(nil), ops[3:3+min(size, 5)]...)
			for len(data) < size {
				data = append(data, 0)
			}
			if ops[2]&4 != 0 {
				dr.d.ReadBAR(0, off, data)
			} else {
				dr.d.WriteBAR(0, off, data)
			}
			ops = ops[8:]
		}
	})
}
