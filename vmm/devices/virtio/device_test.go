package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestStatusNegotiation(t *testing.T) {
	const featA, featB = 1 << 0, 1 << 5
	for _, tc := range []struct {
		name     string
		accept   uint64
		steps    []uint8
		want     uint8
		wantLive bool
	}{
		{"the whole dance", FeatureVersion1 | featA, []uint8{1, 3, 11, 15}, 15, true},
		{"without VERSION_1", featA, []uint8{1, 3, 11}, 3, false},
		{"a feature not offered", FeatureVersion1 | 1<<40, []uint8{1, 3, 11}, 3, false},
		{"DRIVER_OK before FEATURES_OK", FeatureVersion1, []uint8{1, 3, 7}, 3, false},
		{"undefined bits dropped", FeatureVersion1, []uint8{1, 3, 11, 0x7f}, 15, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStatus(featA | featB)
			s.Accept(tc.accept)
			for _, v := range tc.steps {
				s.Set(v)
			}
			if s.Get() != tc.want || s.Live() != tc.wantLive {
				t.Errorf("status %#x live %v, want %#x live %v", s.Get(), s.Live(), tc.want, tc.wantLive)
			}
		})
	}
	s := NewStatus(0)
	s.Accept(FeatureVersion1)
	s.Set(11)
	s.Accept(0) // after FEATURES_OK: ignored
	if s.Accepted() != FeatureVersion1 {
		t.Error("features changed after FEATURES_OK")
	}
	s.Set(15)
	s.NeedsReset(errors.New("test"))
	if s.Live() || s.Get()&StatusNeedsReset == 0 {
		t.Error("needs-reset device still live")
	}
	if !s.Set(0) || s.Get() != 0 || s.Accepted() != 0 {
		t.Error("reset did not clear the device")
	}
}

func TestEntropy(t *testing.T) {
	r := make(ram, 0x10000)
	q := newQueue(t, r, 8)
	e := Entropy{MaxPerRequest: 48}
	r.desc(0, 0x4000, 32, descWrite|descNext, 1)
	r.desc(1, 0x5000, 32, descWrite, 0)
	r.offer(8, 0)
	if err := e.Notify(0, []*Queue{q}); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(r[0x4000:0x4020], make([]byte, 32)) {
		t.Error("no entropy written")
	}
	if !bytes.Equal(r[0x5010:0x5020], make([]byte, 16)) {
		t.Error("wrote past MaxPerRequest")
	}
	if got := binary.LittleEndian.Uint32(r[usedAt+8:]); got != 48 {
		t.Errorf("used length %d, want 48", got)
	}
	r.desc(2, 0x6000, 8, 0, 0)
	r.offer(8, 2)
	if err := e.Notify(0, []*Queue{q}); !errors.Is(err, ErrBadChain) {
		t.Errorf("a readable buffer: %v", err)
	}
}
