package post

import "testing"

func TestPort(t *testing.T) {
	tests := []struct {
		write []byte
		read  int
		want  []byte
	}{
		{nil, 1, []byte{0}},
		{[]byte{0x80}, 1, []byte{0x80}},
		{[]byte{0x12, 0x34}, 1, []byte{0x12}},
		{[]byte{0xaa}, 2, []byte{0xaa, 0xff}},
	}
	for _, tc := range tests {
		p := New()
		if tc.write != nil {
			p.Write(0, tc.write)
		}
		got := make([]byte, tc.read)
		p.Read(0, got)
		if string(got) != string(tc.want) {
			t.Errorf("write % x: read % x, want % x", tc.write, got, tc.want)
		}
		if tc.write != nil && p.Last() != tc.write[0] {
			t.Errorf("Last() = %#x", p.Last())
		}
	}
}
