package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIOCheck(t *testing.T) {
	file := filepath.Join(t.TempDir(), "io")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	// More records than slots: the ring wrapped.
	for n := uint64(1); n <= ioSlots+100; n++ {
		if _, err := f.WriteAt(ioPattern(n), int64(n%ioSlots)*ioRecord); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	var out bytes.Buffer
	if err := ioCheck(file, &out); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != "records=2048 last=2148" {
		t.Errorf("io-check printed %q", got)
	}
	b, _ := os.ReadFile(file)
	for _, tc := range []struct {
		name string
		edit func([]byte)
	}{
		{"flipped byte", func(b []byte) { b[7*ioRecord+100] ^= 1 }},
		{"record in the wrong slot", func(b []byte) { copy(b[5*ioRecord:], ioPattern(6)) }},
		{"stale record", func(b []byte) { copy(b[9*ioRecord:], ioPattern(9)) }},
	} {
		bad := append([]byte(nil), b...)
		tc.edit(bad)
		os.WriteFile(file, bad, 0o644)
		if err := ioCheck(file, &out); err == nil {
			t.Errorf("%s: io-check passed", tc.name)
		}
	}
	os.WriteFile(file, make([]byte, 4096), 0o644)
	if err := ioCheck(file, &out); err == nil {
		t.Error("an empty file passed")
	}
}

func TestMountSpec(t *testing.T) {
	for _, s := range []string{"", "/dev/vda1", "/dev/vda1:/mnt", "/dev/vda1::vfat", "a:b:c:d"} {
		if err := mountSpec(s); err == nil {
			t.Errorf("mount spec %q accepted", s)
		}
	}
}
