package units

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{"512M", 512 << 20, false},
		{"512MiB", 512 << 20, false},
		{"2g", 2 << 30, false},
		{"4096", 4096, false},
		{"64K", 64 << 10, false},
		{"1T", 1 << 40, false},
		{"", 0, true},
		{"M", 0, true},
		{"-1M", 0, true},
		{"1.5G", 0, true},
		{"99999999999999999999", 0, true},
		{"17000000000T", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 118 << 20: "118.0 MiB", 3 << 30: "3.0 GiB", 5 << 40: "5.0 TiB"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}
