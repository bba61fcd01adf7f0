package surface

import (
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

func TestCountsAddUp(t *testing.T) {
	for _, p := range []inventory.Profile{inventory.Full, inventory.FullFirmware, inventory.Minimal} {
		r := Of(p)
		var sum Counts
		for _, c := range r.ByClass {
			sum.Entries += c.Entries
			sum.Ports += c.Ports
			sum.MMIOBytes += c.MMIOBytes
			sum.MSRs += c.MSRs
			sum.PV += c.PV
			sum.Kernel += c.Kernel
		}
		if sum != r.Total {
			t.Errorf("%v: classes sum to %+v, total is %+v", p, sum, r.Total)
		}
		if r.Total.Entries != len(inventory.For(p)) {
			t.Errorf("%v: %d entries counted, inventory has %d", p, r.Total.Entries, len(inventory.For(p)))
		}
	}
}

func TestMinimalHasNoLegacy(t *testing.T) {
	r := Of(inventory.Minimal)
	if c, ok := r.ByClass[inventory.Legacy.String()]; ok {
		t.Errorf("minimal profile has legacy entries: %+v", c)
	}
	full := Of(inventory.Full)
	red := Reduce(full.Total, r.Total)
	if red.Ports <= 0 || red.Kernel <= 0 {
		t.Errorf("minimal is not smaller than full: %+v", red)
	}
}

func TestAdditions(t *testing.T) {
	com1 := inventory.MustGet(inventory.COM1)
	without, with := Of(inventory.Minimal), Of(inventory.Minimal, com1)
	if with.Total.Ports != without.Total.Ports+com1.Size {
		t.Errorf("adding COM1: %d ports, want %d", with.Total.Ports, without.Total.Ports+com1.Size)
	}
}

func TestReduce(t *testing.T) {
	got := Reduce(Counts{Entries: 10, Ports: 100, MSRs: 0, Kernel: 4}, Counts{Entries: 5, Ports: 10, Kernel: 1})
	want := Reduction{Entries: 0.5, Ports: 0.9, MSRs: 0, Kernel: 0.75}
	if got != want {
		t.Errorf("Reduce = %+v, want %+v", got, want)
	}
}
