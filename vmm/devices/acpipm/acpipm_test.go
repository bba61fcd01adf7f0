package acpipm

import (
	"encoding/binary"
	"testing"
)

type line struct{ level bool }

func (l *line) SetLevel(high bool) { l.level = high }

type rig struct {
	pm     *PM
	sci    line
	off    int
	sleeps []uint8
}

func newRig() *rig {
	r := new(rig)
	r.pm = New(&r.sci, Config{PowerOff: func() { r.off++ }, Sleep: func(t uint8) { r.sleeps = append(r.sleeps, t) }})
	return r
}

func le(v uint32, n int) []byte {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	return b[:n]
}

func read(d interface{ Read(uint64, []byte) }, off uint64, n int) uint32 {
	b := make([]byte, 4)
	d.Read(off, b[:n])
	return binary.LittleEndian.Uint32(b)
}

func TestControl(t *testing.T) {
	tests := []struct {
		name   string
		writes []uint16 // 16-bit writes to PM1_CNT
		want   uint16   // PM1_CNT afterwards
		off    int
		sleeps []uint8
	}{
		{"reset", nil, cntSCIEn, 0, nil},
		{"S5 in two steps", []uint16{SlpTypS5 << 10, SlpTypS5<<10 | cntSlpEn}, SlpTypS5<<10 | cntSCIEn, 1, nil},
		{"S5 type alone does not power off", []uint16{SlpTypS5 << 10}, SlpTypS5<<10 | cntSCIEn, 0, nil},
		{"S3 is reported, not done", []uint16{3<<10 | cntSlpEn}, 3<<10 | cntSCIEn, 0, []uint8{3}},
		{"SCI_EN cannot be cleared", []uint16{0}, cntSCIEn, 0, nil},
		{"GBL_RLS is write-only", []uint16{cntGblRls}, cntSCIEn, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig()
			for _, w := range tc.writes {
				r.pm.Control().Write(0, le(uint32(w), 2))
			}
			if got := uint16(read(r.pm.Control(), 0, 2)); got != tc.want {
				t.Errorf("PM1_CNT %#04x, want %#04x", got, tc.want)
			}
			if r.off != tc.off || len(r.sleeps) != len(tc.sleeps) || (len(r.sleeps) > 0 && r.sleeps[0] != tc.sleeps[0]) {
				t.Errorf("poweroffs %d sleeps %v, want %d %v", r.off, r.sleeps, tc.off, tc.sleeps)
			}
		})
	}
}

func TestControlByteWrites(t *testing.T) {
	r := newRig()
	v := uint16(SlpTypS5<<10 | cntSlpEn)
	r.pm.Control().Write(0, []byte{byte(v)})
	r.pm.Control().Write(1, []byte{byte(v >> 8)})
	if r.off != 1 {
		t.Fatalf("byte-wise S5 write: %d poweroffs", r.off)
	}
	if got := read(r.pm.Control(), 1, 1); got != uint32(v>>8)&^(cntSlpEn>>8) {
		t.Fatalf("high byte %#02x", got)
	}
}

func TestEvent(t *testing.T) {
	tests := []struct {
		name    string
		press   bool
		writes  [][2]uint32 // offset, value of 16-bit writes
		width   int         // width of the final read at offset 0
		want    uint32
		wantSCI bool
	}{
		{"reset", false, nil, 4, 0, false},
		{"button without enable", true, nil, 2, stsPwrBtn, false},
		{"button enabled", true, [][2]uint32{{2, stsPwrBtn}}, 4, stsPwrBtn | stsPwrBtn<<16, true},
		{"write 1 clears", true, [][2]uint32{{2, stsPwrBtn}, {0, stsPwrBtn}}, 4, stsPwrBtn << 16, false},
		{"write 0 keeps", true, [][2]uint32{{0, stsTimer}}, 2, stsPwrBtn, false},
		{"enable mask", false, [][2]uint32{{2, 0xffff}}, 4, enMask << 16, false},
		{"byte read", true, nil, 1, stsPwrBtn & 0xff, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig()
			if tc.press {
				r.pm.PowerButton()
			}
			for _, w := range tc.writes {
				r.pm.Event().Write(uint64(w[0]), le(w[1], 2))
			}
			if got := read(r.pm.Event(), 0, tc.width); got != tc.want {
				t.Errorf("event block %#08x, want %#08x", got, tc.want)
			}
			if r.sci.level != tc.wantSCI {
				t.Errorf("SCI %v, want %v", r.sci.level, tc.wantSCI)
			}
		})
	}
}

func TestEvent32(t *testing.T) {
	r := newRig()
	r.pm.PowerButton()
	r.pm.Event().Write(0, le(stsPwrBtn|stsPwrBtn<<16, 4)) // clear and enable at once
	if got := read(r.pm.Event(), 0, 4); got != stsPwrBtn<<16 {
		t.Fatalf("event block %#08x", got)
	}
	if got := read(r.pm.Event(), 2, 2); got != stsPwrBtn {
		t.Fatalf("PM1_EN %#04x", got)
	}
}
