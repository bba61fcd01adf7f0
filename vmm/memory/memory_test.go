package memory

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestRegionsAndE820(t *testing.T) {
	for _, tc := range []struct {
		size    uint64
		regions []Region
		ram     uint64 // bytes of RAM in the e820 map
	}{
		{512 << 20, []Region{{0, 512 << 20}}, 512<<20 - (ACPIEnd - EBDAStart)},
		{3 << 30, []Region{{0, 3 << 30}}, 3<<30 - (ACPIEnd - EBDAStart)},
		{5 << 30, []Region{{0, PCIHoleStart}, {PCIHoleEnd, 2 << 30}}, 5<<30 - (ACPIEnd - EBDAStart)},
	} {
		got := Regions(tc.size)
		if len(got) != len(tc.regions) {
			t.Fatalf("Regions(%d) = %v, want %v", tc.size, got, tc.regions)
		}
		for i := range got {
			if got[i] != tc.regions[i] {
				t.Errorf("Regions(%d)[%d] = %v, want %v", tc.size, i, got[i], tc.regions[i])
			}
		}
		var ram uint64
		m := E820(tc.size)
		for i, e := range m {
			if e.Type == E820RAM {
				ram += e.Size
			}
			if i > 0 && m[i-1].Addr+m[i-1].Size > e.Addr {
				t.Errorf("e820 entries overlap or are unsorted: %v then %v", m[i-1], e)
			}
			if e.Type == E820RAM && e.Addr < PCIHoleEnd && e.Addr+e.Size > PCIHoleStart {
				t.Errorf("e820 RAM %v overlaps the PCI hole", e)
			}
		}
		if ram != tc.ram {
			t.Errorf("E820(%d) has %d bytes of RAM, want %d", tc.size, ram, tc.ram)
		}
	}
}

func TestGuestAccess(t *testing.T) {
	g, err := New(MinSize)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.WriteAt([]byte("bunker"), ZeroPage); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	if err := g.ReadAt(b, ZeroPage); err != nil || string(b) != "bunker" {
		t.Fatalf("ReadAt = %q, %v", b, err)
	}
	for _, tc := range []struct{ gpa, n uint64 }{
		{MinSize - 2, 4},    // runs off the end
		{MinSize, 1},        // past the end
		{PCIHoleStart, 1},   // the hole
		{^uint64(0) - 1, 4}, // overflow
	} {
		if _, err := g.Slice(tc.gpa, tc.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %d) = %v, want ErrOutOfRange", tc.gpa, tc.n, err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, size := range []uint64{0, MinSize - PageSize, MaxSize + PageSize, MinSize + 1} {
		if g, err := New(size); err == nil {
			g.Close()
			t.Errorf("New(%d) succeeded", size)
		}
	}
}

// TestMapFile maps a file over guest memory copy-on-write: the guest sees
// the file, its writes stay private, and two guests mapping one file each
// keep their own writes.
func TestMapFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*PageSize/16)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var gs []*Guest
	for range 2 {
		g, err := New(MinSize)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if err := g.MapFile(16*PageSize, 2*PageSize, f, PageSize); err != nil {
			t.Fatal(err)
		}
		gs = append(gs, g)
	}
	got := make([]byte, 2*PageSize)
	if err := gs[0].ReadAt(got, 16*PageSize); err != nil || !bytes.Equal(got, data[PageSize:]) {
		t.Fatalf("guest reads %q..., want the file's second and third pages (%v)", got[:16], err)
	}
	gs[0].WriteAt([]byte("guest 0"), 16*PageSize)
	gs[1].WriteAt([]byte("guest 1"), 16*PageSize)
	for i, g := range gs {
		g.ReadAt(got[:7], 16*PageSize)
		if want := fmt.Sprintf("guest %d", i); string(got[:7]) != want {
			t.Errorf("guest %d reads %q, want its own write %q", i, got[:7], want)
		}
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, data) {
		t.Error("a guest write reached the file")
	}
	// Around the mapping, memory is still the guest's zeroed RAM.
	gs[0].ReadAt(got[:PageSize], 15*PageSize)
	if !bytes.Equal(got[:PageSize], make([]byte, PageSize)) {
		t.Error("the page before the mapping is not zero")
	}
	for _, bad := range []struct {
		gpa, n uint64
		off    int64
	}{
		{16 * PageSize, 3 * PageSize, PageSize}, // past the file's end
		{16*PageSize + 1, PageSize, 0},          // unaligned address
		{16 * PageSize, PageSize, 1},            // unaligned offset
		{MinSize, PageSize, 0},                  // outside RAM
	} {
		if err := gs[0].MapFile(bad.gpa, bad.n, f, bad.off); err == nil {
			t.Errorf("MapFile(%#x, %#x, off %d) succeeded", bad.gpa, bad.n, bad.off)
		}
	}
}

func TestFirmwareE820(t *testing.T) {
	tests := []struct {
		size uint64
		want []E820Entry
	}{
		{512 << 20, []E820Entry{{0, 512 << 20, E820RAM}}},
		{4 << 30, []E820Entry{{0, PCIHoleStart, E820RAM}, {PCIHoleEnd, 4<<30 - PCIHoleStart, E820RAM}}},
	}
	for _, tc := range tests {
		if got := FirmwareE820(tc.size); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("FirmwareE820(%#x) = %v, want %v", tc.size, got, tc.want)
		}
	}
}
