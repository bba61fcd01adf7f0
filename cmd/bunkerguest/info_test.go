package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
)

func TestCountCPUs(t *testing.T) {
	tests := []struct {
		list    string
		want    int
		wantErr bool
	}{
		{list: "0", want: 1},
		{list: "0-1", want: 2},
		{list: "0-3,6,8-9", want: 7},
		{list: "5", want: 1},
		{list: "", wantErr: true},
		{list: "0-", wantErr: true},
		{list: "3-1", wantErr: true},
		{list: "a", wantErr: true},
		{list: "0,,1", wantErr: true},
		{list: "-1", wantErr: true},
	}
	for _, tt := range tests {
		got, err := countCPUs(tt.list)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("countCPUs(%q) = %d, %v; want %d, error %v", tt.list, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseMemTotal(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    uint64
		wantErr bool
	}{
		{
			name: "typical",
			in:   "MemTotal:        2030148 kB\nMemFree:         1912344 kB\n",
			want: 2030148,
		},
		{
			name: "not first",
			in:   "MemFree:   10 kB\nMemTotal:   4096 kB\n",
			want: 4096,
		},
		{name: "missing", in: "MemFree:   10 kB\n", wantErr: true},
		{name: "no unit", in: "MemTotal:   4096\n", wantErr: true},
		{name: "bad unit", in: "MemTotal:   4096 MB\n", wantErr: true},
		{name: "not a number", in: "MemTotal:   x kB\n", wantErr: true},
		{name: "prefix only", in: "MemTotalX:   4096 kB\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMemTotal(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseMemTotal() = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"info", "extra"}, {"count"}, {"count", "a", "b"}} {
		if err := run(args, new(strings.Builder)); !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v; want usage error", args, err)
		}
	}
}

func TestInfoOutput(t *testing.T) {
	for _, cmd := range []string{"info", "uinit"} {
		var out strings.Builder
		if err := run([]string{cmd}, &out); err != nil {
			t.Fatalf("bunkerguest %s: %v", cmd, err)
		}
		text := out.String()
		if cmd == "uinit" {
			var ok bool
			if text, ok = strings.CutSuffix(text, guestproto.ReadyLine+"\n"); !ok {
				t.Errorf("bunkerguest uinit does not end with %s:\n%s", guestproto.ReadyLine, out.String())
			}
		}
		var keys []string
		for line := range strings.Lines(text) {
			k, v, ok := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
			if !ok || v == "" {
				t.Errorf("bunkerguest %s: line %q is not key=value", cmd, line)
			}
			keys = append(keys, k)
		}
		want := "cpus cpus_online mem_total_kib unix_time kernel_release"
		if got := strings.Join(keys, " "); got != want {
			t.Errorf("bunkerguest %s: keys = %q; want %q", cmd, got, want)
		}
	}
}
