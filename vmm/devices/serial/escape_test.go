package serial

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestEscape(t *testing.T) {
	tests := []struct {
		in    string
		want  string
		quits int
	}{
		{"hello", "hello", 0},
		{"a\x01xb", "ab", 1},
		{"\x01\x01", "\x01", 0},
		{"a\x01zb", "ab", 0},
		{"\x01x\x01x", "", 2},
		{"x\x01", "x", 0},
		{"\x01\x01x", "\x01x", 0},
	}
	for _, tc := range tests {
		for _, oneByte := range []bool{false, true} {
			var src io.Reader = strings.NewReader(tc.in)
			if oneByte {
				src = iotest.OneByteReader(src)
			}
			quits := 0
			got, err := io.ReadAll(NewEscape(src, func() { quits++ }))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want || quits != tc.quits {
				t.Errorf("%q (one byte %v): got %q, %d quits; want %q, %d", tc.in, oneByte, got, quits, tc.want, tc.quits)
			}
		}
	}
}
