package inventory

import (
	"testing"
)

func TestTableSortedAndDisjoint(t *testing.T) {
	for i := 1; i < len(table); i++ {
		a, b := table[i-1], table[i]
		if a.Space > b.Space || a.Space == b.Space && a.Base > b.Base {
			t.Errorf("table not sorted: %v before %v", a, b)
		}
	}
	// A machine's profile is Full, Minimal or FullFirmware; no two entries
	// one of them offers may overlap.
	for _, p := range []Profile{Full, Minimal, FullFirmware} {
		es := For(p)
		for i := 1; i < len(es); i++ {
			a, b := es[i-1], es[i]
			if a.Space == b.Space && a.Space != SpaceKernel && a.Space != SpacePV && a.End() > b.Base {
				t.Errorf("%v overlaps %v in profile %v", a, b, p)
			}
		}
	}
}

func TestEntriesWellFormed(t *testing.T) {
	seen := map[ID]bool{}
	for _, e := range table {
		if seen[e.ID] {
			t.Errorf("duplicate ID %q", e.ID)
		}
		seen[e.ID] = true
		if e.Owner == "" {
			t.Errorf("%v has no owner", e)
		}
		if e.Why == "" {
			t.Errorf("%v does not say why a guest needs it", e)
		}
		if e.Size == 0 {
			t.Errorf("%v is empty", e)
		}
		if e.Profiles&^(Full|Minimal|Firmware) != 0 || e.Profiles == 0 {
			t.Errorf("%v has profiles %v", e, e.Profiles)
		}
		if e.Profiles&Firmware != 0 && (e.Class != Legacy || e.Profiles != Firmware) {
			t.Errorf("%v: firmware entries are legacy, and offered only with firmware (profiles %v)", e, e.Profiles)
		}
		if e.Class == Legacy && e.In(Minimal) {
			t.Errorf("%v is legacy but offered by the minimal profile", e)
		}
		if e.Class == 0 {
			t.Errorf("%v has no class", e)
		}
		if e.Space == 0 {
			t.Errorf("%v has no space", e)
		}
	}
}

// Minimal offers nothing Full lacks: a guest booted on Full keeps every
// required entry after the handoff.
func TestMinimalSubsetOfFull(t *testing.T) {
	full := For(Full)
	for _, e := range For(Minimal) {
		if e.In(Full) {
			continue
		}
		// A different server for the same addresses (the IOAPIC) is fine.
		covered := false
		for _, f := range full {
			if f.Space == e.Space && e.Space != SpaceKernel && e.Space != SpacePV && f.Base <= e.Base && e.End() <= f.End() {
				covered = true
			}
		}
		if !covered {
			t.Errorf("%v is offered by minimal but not by full", e)
		}
	}
}

func TestLookups(t *testing.T) {
	for _, e := range table {
		got, ok := Get(e.ID)
		if !ok || got != e {
			t.Errorf("Get(%q) = %v, %v", e.ID, got, ok)
		}
	}
	if _, ok := Get("no-such-entry"); ok {
		t.Error("Get of an unknown ID succeeded")
	}
	for _, tc := range []struct {
		in   string
		want Profile
		err  bool
	}{{"full", Full, false}, {"minimal", Minimal, false}, {"Full", 0, true}, {"", 0, true}} {
		got, err := ParseProfile(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("ParseProfile(%q) = %v, %v", tc.in, got, err)
		}
	}
}
