// Package surface measures the guest-facing interface a profile offers,
// from the inventory: how many ports, MMIO bytes, MSRs, paravirtual
// features and in-kernel devices, by class, and the reduction from one
// profile to another.
package surface

import (
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

// Counts is the size of a surface in each space.
type Counts struct {
	Entries   int    `json:"entries"`
	Ports     uint64 `json:"ports"`
	MMIOBytes uint64 `json:"mmio_bytes"`
	MSRs      uint64 `json:"msrs"`
	PV        uint64 `json:"pv_features"`
	Kernel    uint64 `json:"kvm_devices"`
}

func (c *Counts) add(e inventory.Entry) {
	c.Entries++
	switch e.Space {
	case inventory.SpacePIO:
		c.Ports += e.Size
	case inventory.SpaceMMIO:
		c.MMIOBytes += e.Size
	case inventory.SpaceMSR:
		c.MSRs += e.Size
	case inventory.SpacePV:
		c.PV += e.Size
	case inventory.SpaceKernel:
		c.Kernel += e.Size
	}
}

// Report is a profile's surface.
type Report struct {
	Profile string            `json:"profile"`
	Entries []inventory.Entry `json:"-"`
	Total   Counts            `json:"total"`
	ByClass map[string]Counts `json:"by_class"`
}

// Of returns the surface of profile p, plus the given additions (opt-in
// entries such as the serial console).
func Of(p inventory.Profile, additions ...inventory.Entry) Report {
	r := Report{Profile: p.String(), ByClass: map[string]Counts{}}
	for _, e := range append(inventory.For(p), additions...) {
		r.Entries = append(r.Entries, e)
		r.Total.add(e)
		c := r.ByClass[e.Class.String()]
		c.add(e)
		r.ByClass[e.Class.String()] = c
	}
	return r
}

// Reduction is how much smaller one surface is than another, per space,
// as a fraction of the larger (0.9 is 90% smaller).
type Reduction struct {
	Entries float64 `json:"entries"`
	Ports   float64 `json:"ports"`
	MSRs    float64 `json:"msrs"`
	Kernel  float64 `json:"kvm_devices"`
}

func frac(from, to uint64) float64 {
	if from == 0 {
		return 0
	}
	return 1 - float64(to)/float64(from)
}

// Reduce compares surface to against from.
func Reduce(from, to Counts) Reduction {
	return Reduction{
		Entries: frac(uint64(from.Entries), uint64(to.Entries)),
		Ports:   frac(from.Ports, to.Ports),
		MSRs:    frac(from.MSRs, to.MSRs),
		Kernel:  frac(from.Kernel, to.Kernel),
	}
}
