package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/commands"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/surface"
)

func surfaceCommand() *cli.Command {
	return &cli.Command{
		Name:  "surface",
		Usage: "print the guest-facing surface of a device profile, from the inventory, and its reduction from full",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "profile", Value: "minimal", Usage: "full or minimal"},
			&cli.BoolFlag{Name: "serial", Usage: "include COM1 as an opt-in console addition"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *cli.Context) error {
			p, err := inventory.ParseProfile(c.String("profile"))
			if err != nil {
				return commands.UsageError("--profile: %v", err)
			}
			var adds []inventory.Entry
			if com1 := inventory.MustGet(inventory.COM1); c.Bool("serial") && !com1.In(p) {
				adds = append(adds, com1)
			}
			r := surface.Of(p, adds...)
			// The reduction from each boot profile: a guest that
			// boots a kernel, and one that boots a disk through firmware.
			reds := map[string]surface.Reduction{}
			for _, from := range []inventory.Profile{inventory.Full, inventory.FullFirmware} {
				reds[from.String()] = surface.Reduce(surface.Of(from).Total, r.Total)
			}
			if c.Bool("json") {
				return writeSurfaceJSON(os.Stdout, r, adds, reds)
			}
			writeSurface(os.Stdout, r, adds, reds)
			return nil
		},
	}
}

func writeSurfaceJSON(w io.Writer, r surface.Report, adds []inventory.Entry, reds map[string]surface.Reduction) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		surface.Report
		Entries       []inventory.Entry            `json:"entries"`
		Additions     []inventory.Entry            `json:"additions"`
		ReductionFull surface.Reduction            `json:"reduction_from_full"`
		Reductions    map[string]surface.Reduction `json:"reduction_from"`
	}{r, r.Entries, adds, reds[inventory.Full.String()], reds})
}

func writeSurface(w io.Writer, r surface.Report, adds []inventory.Entry, reds map[string]surface.Reduction) {
	isAdd := map[inventory.ID]bool{}
	for _, a := range adds {
		isAdd[a.ID] = true
	}
	fmt.Fprintf(w, "profile %s\n\n", r.Profile)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CLASS\tSPACE\tENTRY\tRANGE\tOWNER\tWHY")
	for _, class := range []inventory.Class{inventory.Required, inventory.Legacy, inventory.Console} {
		for _, space := range []inventory.Space{inventory.SpacePIO, inventory.SpaceMMIO, inventory.SpaceMSR, inventory.SpacePV, inventory.SpaceKernel} {
			for _, e := range r.Entries {
				if e.Class != class || e.Space != space {
					continue
				}
				rng := "-"
				switch e.Space {
				case inventory.SpacePIO, inventory.SpaceMMIO, inventory.SpaceMSR:
					rng = fmt.Sprintf("%#x-%#x", e.Base, e.End()-1)
				case inventory.SpacePV:
					rng = fmt.Sprintf("bit %d", e.Base)
				}
				cls := e.Class.String()
				if isAdd[e.ID] {
					cls += " (addition)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cls, e.Space, e.ID, rng, e.Owner, e.Why)
			}
		}
	}
	tw.Flush()
	t := r.Total
	fmt.Fprintf(w, "\n%d entries: %d I/O ports, %d MMIO bytes, %d MSRs (plus x2APIC, which KVM cannot filter), %d PV features, %d in-kernel KVM devices\n",
		t.Entries, t.Ports, t.MMIOBytes, t.MSRs, t.PV, t.Kernel)
	for _, from := range []inventory.Profile{inventory.Full, inventory.FullFirmware} {
		red := reds[from.String()]
		fmt.Fprintf(w, "reduction from %s: %.0f%% of entries, %.0f%% of I/O ports, %.0f%% of MSRs, %.0f%% of in-kernel devices\n",
			from, 100*red.Entries, 100*red.Ports, 100*red.MSRs, 100*red.Kernel)
	}
}
