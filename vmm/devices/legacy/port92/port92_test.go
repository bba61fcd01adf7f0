package port92

import "testing"

func TestPort(t *testing.T) {
	tests := []struct {
		name      string
		writes    []byte
		want      byte
		wantReset int
	}{
		{"power-on", nil, BitA20, 0},
		{"close A20", []byte{0}, 0, 0},
		{"open A20 with lights", []byte{0xc2}, 0xc2, 0},
		{"fast reset", []byte{BitA20 | bitReset}, BitA20, 1},
		{"two resets", []byte{bitReset, bitReset}, 0, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resets := 0
			p := New(func() { resets++ })
			for _, w := range tc.writes {
				p.Write(0, []byte{w})
			}
			b := []byte{0xff}
			p.Read(0, b)
			if b[0] != tc.want || resets != tc.wantReset {
				t.Errorf("reads %#x after %d resets, want %#x after %d", b[0], resets, tc.want, tc.wantReset)
			}
		})
	}
}

func TestWideAccess(t *testing.T) {
	p := New(nil)
	b := []byte{0xff, 0xff}
	p.Read(0, b)
	if b[0] != BitA20 || b[1] != 0 {
		t.Errorf("16-bit read = % x, want %02x 00", b, BitA20)
	}
	p.Write(0, []byte{1, 0}) // no reset function: nothing happens
}
