package integration

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
)

// probeMarker starts the line "bunkerguest probe --json" prints; it must
// match ProbeMarker in cmd/bunkerguest.
const probeMarker = "BUNKERGUEST-PROBE "

// Range is an inclusive range of I/O ports or MSR indexes.
type Range struct {
	First uint32 `json:"first"`
	Last  uint32 `json:"last"`
}

func (r Range) String() string {
	if r.First == r.Last {
		return fmt.Sprintf("%#x", r.First)
	}
	return fmt.Sprintf("%#x-%#x", r.First, r.Last)
}

// PortValue is a live port and the byte it read as.
type PortValue struct {
	Port  uint16 `json:"port"`
	Value uint8  `json:"value"`
}

// MSRValue is a readable MSR and its value.
type MSRValue struct {
	Index uint32 `json:"index"`
	Value uint64 `json:"value"`
}

// ProbeCPUID is what the guest's CPUID says about its hypervisor.
type ProbeCPUID struct {
	HypervisorBit bool `json:"hypervisor_bit"`
	Leaves        []struct {
		Base      uint32 `json:"base"`
		MaxLeaf   uint32 `json:"max_leaf"`
		Signature string `json:"signature"`
	} `json:"leaves"`
	KVMBase     uint32 `json:"kvm_base"` // 0: no KVM signature
	KVMFeatures uint32 `json:"kvm_features"`
	KVMHints    uint32 `json:"kvm_hints"`
}

// Probe is what "bunkerguest probe --json" found from inside a guest: the
// live I/O ports (all 65536 were read; live means not 0xFF), the readable
// MSRs among those in MSRsScanned, and the hypervisor CPUID leaves. See
// cmd/bunkerguest/probe.go for how, and for the side effects of reading.
// Live is judged by value, so a port that read 0xFF this time (a counter,
// say) is missing: fine for "everything live is in the inventory", not
// proof that a port is absent.
type Probe struct {
	Ports      []PortValue `json:"ports"`
	PortRanges []Range     `json:"port_ranges"` // Ports, compressed
	LivePorts  int         `json:"live_ports"`
	PortError  string      `json:"port_error"` // the port scan could not run

	MSRs                      []MSRValue `json:"msrs"`
	MSRRanges                 []Range    `json:"msr_ranges"` // MSRs, compressed
	MSRsScanned               []Range    `json:"msrs_scanned"`
	ReadableMSRs              int        `json:"readable_msrs"`
	ReadableMSRsOutsideX2APIC int        `json:"readable_msrs_outside_x2apic"`
	MSRError                  string     `json:"msr_error"` // the MSR scan could not run

	CPUID      ProbeCPUID `json:"cpuid_hv"`
	PVFeatures []string   `json:"pv_features"` // KVM PV feature names, e.g. "PV_EOI"

	// Time the scans took, by the guest's clock.
	PortsMillis int64 `json:"ports_ms"`
	MSRsMillis  int64 `json:"msrs_ms"`
	TotalMillis int64 `json:"total_ms"`

	// Wall, on the host: from typing the command to the shell's status,
	// so including the output over the console.
	Wall time.Duration `json:"-"`
}

// PortsOutside returns the live port ranges, or parts of them, that allowed
// does not cover: for a VMM, what the guest reaches that its inventory does
// not list.
func (p Probe) PortsOutside(allowed []Range) []Range { return notCovered(p.PortRanges, allowed) }

// MSRsOutside is PortsOutside for the readable MSRs.
func (p Probe) MSRsOutside(allowed []Range) []Range { return notCovered(p.MSRRanges, allowed) }

// probeOverConsole runs "bunkerguest probe --json" at the shell prompt of
// the guest on c and returns what it found. It works on any guest booted
// with the default initramfs, on our VMM (session.Session's Console) or on
// another one. Nothing must be typed into the guest while it runs: the scan
// reads the serial port's receive buffer. A scan that could not run is an
// error, returned with the rest of the probe.
func probeOverConsole(ctx context.Context, c *console.Console) (Probe, error) {
	start := time.Now()
	out, status, err := c.Run(ctx, "bunkerguest probe --json")
	if err != nil {
		return Probe{}, err
	}
	p, err := parseProbe(out)
	p.Wall = time.Since(start)
	if err != nil {
		return p, fmt.Errorf("bunkerguest probe (exit status %d): %w", status, err)
	}
	if p.PortError != "" || p.MSRError != "" || status != 0 {
		return p, fmt.Errorf("bunkerguest probe: exit status %d: %s", status, strings.TrimSpace(p.PortError+"; "+p.MSRError))
	}
	return p, nil
}

// kernelMessage is a kernel log line on the console, "[   22.899959] ...".
// The kernel prints it whenever it logs, so it can split the probe's line:
// the JSON then continues after it.
var kernelMessage = regexp.MustCompile(`\[ *\d+\.\d+\] [^\r\n]*\r?\n`)

// parseProbe finds the marker line in console output, without kernel
// messages, and decodes it.
func parseProbe(out string) (Probe, error) {
	out = kernelMessage.ReplaceAllString(out, "")
	for line := range strings.Lines(out) {
		_, js, ok := strings.Cut(line, probeMarker)
		if !ok {
			continue
		}
		var p Probe
		if err := json.Unmarshal([]byte(strings.TrimSpace(js)), &p); err != nil {
			return Probe{}, fmt.Errorf("decode the probe line: %w", err)
		}
		if p.LivePorts != len(p.Ports) || p.ReadableMSRs != len(p.MSRs) {
			return p, fmt.Errorf("probe line is inconsistent: %d live ports listed, %d counted; %d MSRs listed, %d counted",
				len(p.Ports), p.LivePorts, len(p.MSRs), p.ReadableMSRs)
		}
		return p, nil
	}
	return Probe{}, fmt.Errorf("no %q line in the output %q", strings.TrimSpace(probeMarker), tail([]byte(out)))
}

// notCovered returns the parts of the ranges in have that no range in
// allowed covers, merged and in ascending order.
func notCovered(have, allowed []Range) []Range {
	allowed = slices.Clone(allowed)
	slices.SortFunc(allowed, byFirst)
	var out []Range
	add := func(r Range) {
		if n := len(out); n > 0 && uint64(out[n-1].Last)+1 >= uint64(r.First) {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			return
		}
		out = append(out, r)
	}
	have = slices.Clone(have)
	slices.SortFunc(have, byFirst)
	for _, h := range have {
		next := uint64(h.First) // first value of h not yet accounted for
		for _, a := range allowed {
			if uint64(a.Last) < next || a.First > h.Last {
				continue
			}
			if uint64(a.First) > next {
				add(Range{uint32(next), a.First - 1})
			}
			next = uint64(a.Last) + 1
			if next > uint64(h.Last) {
				break
			}
		}
		if next <= uint64(h.Last) {
			add(Range{uint32(next), h.Last})
		}
	}
	return out
}

func byFirst(a, b Range) int { return cmp.Compare(a.First, b.First) }

// formatRanges writes ranges compactly, e.g. "0x20-0x21 0x3f8-0x3ff".
func formatRanges(rs []Range) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, " ")
}

func TestNotCovered(t *testing.T) {
	tests := []struct {
		have, allowed, want []Range
	}{
		{nil, nil, nil},
		{[]Range{{0x20, 0x21}}, nil, []Range{{0x20, 0x21}}},
		{[]Range{{0x20, 0x21}, {0x3f8, 0x3ff}}, []Range{{0x3f8, 0x3ff}, {0x20, 0x21}}, nil},
		{[]Range{{0x3f8, 0x3ff}}, []Range{{0x3f8, 0x3f8}, {0x3fd, 0x3fd}}, []Range{{0x3f9, 0x3fc}, {0x3fe, 0x3ff}}},
		{[]Range{{0x10, 0x1f}}, []Range{{0x0, 0x12}, {0x18, 0x40}}, []Range{{0x13, 0x17}}},
		{[]Range{{0x10, 0x1f}, {0x20, 0x2f}}, []Range{{0x18, 0x27}}, []Range{{0x10, 0x17}, {0x28, 0x2f}}},
		{[]Range{{0xc0010000, 0xffffffff}}, []Range{{0xc0010000, 0xc0010fff}, {0xfffffff0, 0xffffffff}}, []Range{{0xc0011000, 0xffffffef}}},
	}
	for _, tt := range tests {
		if got := notCovered(tt.have, tt.allowed); !slices.Equal(got, tt.want) {
			t.Errorf("notCovered(%v, %v) = %v; want %v", tt.have, tt.allowed, got, tt.want)
		}
	}
}

func TestParseProbe(t *testing.T) {
	out := "$ bunkerguest probe --json\n" + probeMarker +
		`{"ports":[{"port":1016,"value":0},{"port":1017,"value":5}],"port_ranges":[{"first":1016,"last":1017}],"live_ports":2,` +
		`"msrs":[{"index":16,"value":18446744073709551615}],"msr_ranges":[{"first":16,"last":16}],"readable_msrs":1,"readable_msrs_outside_x2apic":1,` +
		`"cpuid_hv":{"hypervisor_bit":true,"leaves":[{"base":1073741824,"max_leaf":1073741825,"signature":"KVMKVMKVM"}],"kvm_base":1073741824,"kvm_features":1,"kvm_hints":0},` +
		`"pv_features":["CLOCKSOURCE"],"total_ms":7}` + "\n"
	p, err := parseProbe(out)
	if err != nil {
		t.Fatal(err)
	}
	if p.LivePorts != 2 || p.Ports[1] != (PortValue{0x3f9, 5}) || p.MSRs[0].Value != 1<<64-1 ||
		p.CPUID.KVMBase != 0x40000000 || p.CPUID.Leaves[0].Signature != "KVMKVMKVM" || p.TotalMillis != 7 {
		t.Errorf("parseProbe = %+v", p)
	}
	if got := p.PortsOutside([]Range{{0x3f8, 0x3f8}}); !slices.Equal(got, []Range{{0x3f9, 0x3f9}}) {
		t.Errorf("PortsOutside = %v", got)
	}
	// A kernel message in the middle of the line, as the console shows it.
	split := strings.Replace(out, `{"port":1017`, "{[   22.899959] clocksource: Long readout interval, skipping watchdog check\r\n"+`"port":1017`, 1)
	if q, err := parseProbe(split); err != nil || q.LivePorts != 2 {
		t.Errorf("parseProbe with a kernel message inside = %+v, %v", q, err)
	}
	if _, err := parseProbe("$ bunkerguest probe --json\nbunkerguest: no /dev/port\n"); err == nil {
		t.Error("parseProbe without a marker line succeeded")
	}
	bad := strings.Replace(out, `"live_ports":2`, `"live_ports":3`, 1)
	if _, err := parseProbe(bad); err == nil {
		t.Error("parseProbe of an inconsistent line succeeded")
	}
}
