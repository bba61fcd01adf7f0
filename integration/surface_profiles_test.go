package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// Targets for the minimal profile, counted by the in-guest probe.
const (
	maxMinimalLivePorts = 8  // not counting the opt-in COM1 console
	maxMinimalMSRs      = 40 // readable, outside the x2APIC block
	// minReduction applies to the ports the profiles may differ in: the
	// PCI configuration ports are in both by design (the virtio issue
	// puts mechanism #1 in both profiles), so they are counted, and
	// shown, but left out of the reduction.
	minReduction = 0.9
)

var x2APIC = Range{0x800, 0x8ff}

// EnvSurfacePeers, set to 1, makes TestSurface also probe QEMU's machine
// types for the side-by-side table (about five more minutes in the lab).
const EnvSurfacePeers = "BUNKERBUILD_SURFACE_PEERS"

// TestSurface runs the in-guest probe under each of our profiles and, with
// EnvSurfacePeers=1, under QEMU's machine types, and prints them side by
// side. On our VMM it checks
// that everything the probe finds alive is in the profile's inventory, that
// the minimal profile meets its targets, and that the VMM counted the
// probe's denied accesses.
func TestSurface(t *testing.T) {
	kvmtest.Require(t)
	var rows []surfaceRow
	// Live ports of each profile proper: the full profile's include its
	// boot console, the minimal profile's leave out the opt-in addition.
	live := map[inventory.Profile]int{}
	livePCI := map[inventory.Profile]int{} // of which PCI configuration ports
	for _, p := range []inventory.Profile{inventory.Full, inventory.Minimal} {
		t.Run(p.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // the probe makes one exit per port: slow in a slow lab
			defer cancel()
			cfg := machine.Config{Profile: p, Memory: 512 << 20, CPUs: 1, SerialConsole: true}
			s := boot(t, ctx, cfg)
			pio, _, msr := s.Machine.Buses()[0], s.Machine.Buses()[1], s.Machine.Buses()[2]
			deniedPorts, deniedMSRs := pio.DeniedTotal(), msr.DeniedTotal()
			probe, err := probeOverConsole(ctx, s.Console)
			if err != nil {
				t.Fatal(err)
			}
			name := "bunkerbuild " + p.String()
			if !inventory.MustGet(inventory.COM1).In(p) {
				name += " + COM1"
			}
			rows = append(rows, surfaceRow{name, probe})

			var ports, msrs []Range
			com1 := inventory.MustGet(inventory.COM1)
			for _, e := range append(inventory.For(p), com1) {
				r := Range{uint32(e.Base), uint32(e.End() - 1)}
				switch e.Space {
				case inventory.SpacePIO:
					ports = append(ports, r)
				case inventory.SpaceMSR:
					msrs = append(msrs, r)
				}
			}
			if out := probe.PortsOutside(ports); len(out) > 0 {
				t.Errorf("live ports outside the %v inventory: %s", p, formatRanges(out))
			}
			if out := probe.MSRsOutside(append(msrs, x2APIC)); len(out) > 0 {
				t.Errorf("readable MSRs outside the %v inventory: %s", p, formatRanges(out))
			}
			pciAddr, pciData := inventory.MustGet(inventory.PCIConfigAddress), inventory.MustGet(inventory.PCIConfigData)
			for _, pv := range probe.Ports {
				if com1.In(p) || !com1.Contains(uint64(pv.Port)) {
					live[p]++
					if pciAddr.Contains(uint64(pv.Port)) || pciData.Contains(uint64(pv.Port)) {
						livePCI[p]++
					}
				}
			}
			if p == inventory.Minimal {
				if live[p] > maxMinimalLivePorts {
					t.Errorf("minimal profile: %d live ports besides COM1, target at most %d", live[p], maxMinimalLivePorts)
				}
				if probe.ReadableMSRsOutsideX2APIC > maxMinimalMSRs {
					t.Errorf("minimal profile: %d readable MSRs outside x2APIC, target at most %d", probe.ReadableMSRsOutsideX2APIC, maxMinimalMSRs)
				}
			}
			// The probe read every port and MSR once; the VMM saw and
			// counted each access it denied.
			if got := pio.DeniedTotal() - deniedPorts; got < 65536-64 {
				t.Errorf("port accesses counted as denied during the probe: %d, want nearly 65536", got)
			}
			scanned := 0
			for _, r := range probe.MSRsScanned {
				scanned += int(r.Last-r.First) + 1
			}
			if got := msr.DeniedTotal() - deniedMSRs; got < uint64(scanned-512) {
				t.Errorf("MSR accesses counted as denied during the probe: %d of %d scanned", got, scanned)
			}
		})
	}
	if os.Getenv(EnvSurfacePeers) == "1" {
		rows = append(rows, probeQEMUMachines(t)...)
	}
	printSurfaceTable(os.Stdout, rows)
	fmt.Printf("QEMU: -accel kvm -cpu host -m 512 -smp 1 -serial stdio -append %q; ms: the guest's clock; wall: the host's, from typing the command to its end, output included\n", surfaceCmdline)
	if full, min := live[inventory.Full], live[inventory.Minimal]; full > 0 {
		fullOwn, minOwn := full-livePCI[inventory.Full], min-livePCI[inventory.Minimal]
		red := 1 - float64(min)/float64(full)
		redOwn := 1 - float64(minOwn)/float64(max(fullOwn, 1))
		fmt.Printf("live ports: full %d, minimal %d (without its opt-in console): %.1f%% fewer; without the PCI configuration ports both have (%d and %d): %d and %d, %.1f%% fewer\n",
			full, min, 100*red, livePCI[inventory.Full], livePCI[inventory.Minimal], fullOwn, minOwn, 100*redOwn)
		if redOwn < minReduction {
			t.Errorf("minimal profile: %.1f%% fewer live ports than full, besides PCI configuration; target at least %.0f%%", 100*redOwn, 100*minReduction)
		}
	}
}
