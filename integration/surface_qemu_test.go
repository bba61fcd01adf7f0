package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
)

// surfaceCmdline is the guest command line of the surface comparison.
const surfaceCmdline = "console=ttyS0 quiet"

// qemuMachine is one QEMU configuration whose guest-visible surface
// TestSurfaceQEMU measures.
type qemuMachine struct {
	name string
	args []string // after qemu-system-x86_64's common arguments
}

func surfaceMachines() []qemuMachine {
	return []qemuMachine{
		// QEMU's defaults: VGA, e1000 NIC, IDE, floppy, parallel port...
		{"pc", []string{"-M", "pc"}},
		{"q35", []string{"-M", "q35"}},
		// Only what -serial adds back (COM1 on the ISA bus).
		{"pc -nodefaults", []string{"-M", "pc", "-nodefaults"}},
		// microvm's ISA serial (isa-serial=on by default) gets -serial.
		{"microvm", []string{"-M", "microvm"}},
		{"microvm,pit=off,pic=off", []string{"-M", "microvm,pit=off,pic=off"}},
	}
}

// startQEMU boots the default guest in QEMU with KVM and returns its console
// once the guest's shell answers. QEMU is killed when the test ends.
func startQEMU(t *testing.T, ctx context.Context, m qemuMachine, kernel, initrd string) *console.Console {
	t.Helper()
	args := append([]string{"-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "1",
		"-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", surfaceCmdline}, m.args...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var log, stderr bytes.Buffer
	c := console.New(stdin, &log)
	cmd.Stdout = c
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", m.name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s: qemu-system-x86_64 %s\nconsole:\n%s\nstderr:\n%s", m.name, strings.Join(args, " "), log.String(), stderr.String())
		}
	})
	if _, err := c.Expect(ctx, regexp.MustCompile(`cpus=\d+`)); err != nil {
		t.Fatalf("%s: guest did not reach userspace: %v", m.name, err)
	}
	if _, status, err := c.Run(ctx, "true"); err != nil || status != 0 {
		t.Fatalf("%s: guest shell does not answer: status %d, %v", m.name, status, err)
	}
	return c
}

// TestSurfaceQEMU boots the default guest under QEMU with KVM for several
// machine types, runs bunkerguest's probe in each and prints a table of what
// the guest can reach: live I/O ports, readable MSRs, KVM PV features.
//
// It is a test, not a benchmark: what it measures are counts, which do not
// vary from run to run, so b.N repetitions would add boot time and nothing
// else; the probe's run time is reported for information. As a test it runs
// with the rest, so the probe and probeOverConsole keep working against a
// reference VMM, and it checks what must hold whatever the QEMU version: the
// console's COM1 is live, KVM's CPUID signature is there, and pit=off,pic=off
// really removes the i8254 and i8259 ports. The table shows with go test -v.
func probeQEMUMachines(t *testing.T) []surfaceRow {
	kernel, initrd := os.Getenv(envKernel), os.Getenv(envInitrd)
	var rows []surfaceRow
	for _, m := range surfaceMachines() {
		t.Run(strings.NewReplacer(" ", "_", ",", "_").Replace(m.name), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			c := startQEMU(t, ctx, m, kernel, initrd)
			p, err := probeOverConsole(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, surfaceRow{m.name, p})
			checkSurface(t, m, p)
		})
	}
	return rows
}

// checkSurface checks what any QEMU version must show.
func checkSurface(t *testing.T, m qemuMachine, p Probe) {
	t.Helper()
	if p.CPUID.KVMBase == 0 || !slices.Contains(p.PVFeatures, "CLOCKSOURCE2") {
		t.Errorf("%s: no KVM signature or no kvmclock in CPUID: %+v, features %q", m.name, p.CPUID, p.PVFeatures)
	}
	if out := notCovered([]Range{{0x3f8, 0x3f8}, {0x3fd, 0x3fd}}, p.PortRanges); len(out) != 0 {
		t.Errorf("%s: COM1 (data 0x3f8, line status 0x3fd) not live: live ports %s", m.name, formatRanges(p.PortRanges))
	}
	if p.ReadableMSRs == 0 {
		t.Errorf("%s: no readable MSRs", m.name)
	}
	if strings.Contains(m.name, "pit=off,pic=off") {
		for _, pv := range p.Ports {
			if pic, pit := pv.Port&^0x81 == 0x20, pv.Port&^3 == 0x40; pic || pit {
				t.Errorf("%s: PIC or PIT port %#x live (%#02x)", m.name, pv.Port, pv.Value)
			}
		}
	}
}

// surfaceRow is one guest's probe in a surface table.
type surfaceRow struct {
	Name  string
	Probe Probe
}

// printSurfaceTable prints one line per probe, then the PV features and
// readable MSR ranges (once if all agree) and the live port ranges of each.
func printSurfaceTable(w io.Writer, rows []surfaceRow) {
	if len(rows) == 0 {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-24s %10s %11s %13s %15s %11s %9s %9s %9s %7s\n", "machine", "live ports", "port ranges",
		"readable MSRs", "outside x2APIC", "PV features", "ports ms", "MSRs ms", "probe ms", "wall s")
	for _, r := range rows {
		p := r.Probe
		fmt.Fprintf(&b, "%-24s %10d %11d %13d %15d %11d %9d %9d %9d %7.1f\n", r.Name, p.LivePorts, len(p.PortRanges),
			p.ReadableMSRs, p.ReadableMSRsOutsideX2APIC, len(p.PVFeatures), p.PortsMillis, p.MSRsMillis, p.TotalMillis, p.Wall.Seconds())
	}
	first := rows[0].Probe
	for _, r := range rows {
		if r.Name == rows[0].Name || !slices.Equal(r.Probe.PVFeatures, first.PVFeatures) {
			fmt.Fprintf(&b, "PV features (%s): %s\n", r.Name, strings.Join(r.Probe.PVFeatures, " "))
		} else {
			fmt.Fprintf(&b, "PV features (%s): same\n", r.Name)
		}
	}
	for _, r := range rows {
		if r.Name == rows[0].Name || !slices.Equal(r.Probe.MSRRanges, first.MSRRanges) {
			fmt.Fprintf(&b, "readable MSRs (%s): %s\n", r.Name, formatRanges(r.Probe.MSRRanges))
		} else {
			fmt.Fprintf(&b, "readable MSRs (%s): same\n", r.Name)
		}
	}
	for _, r := range rows {
		fmt.Fprintf(&b, "live ports (%s): %s\n", r.Name, formatRanges(r.Probe.PortRanges))
	}
	io.WriteString(w, b.String())
}
