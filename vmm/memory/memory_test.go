package memory

import (
	"errors"
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
