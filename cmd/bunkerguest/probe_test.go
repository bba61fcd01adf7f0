package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCompress(t *testing.T) {
	tests := []struct {
		in   []uint32
		want []span
	}{
		{nil, []span{}},
		{[]uint32{7}, []span{{7, 7}}},
		{[]uint32{0x20, 0x21, 0x40, 0x41, 0x42, 0x43, 0x61}, []span{{0x20, 0x21}, {0x40, 0x43}, {0x61, 0x61}}},
		{[]uint32{1, 3, 5}, []span{{1, 1}, {3, 3}, {5, 5}}},
		{[]uint32{0xFFFFFFFE, 0xFFFFFFFF}, []span{{0xFFFFFFFE, 0xFFFFFFFF}}},
		// No wrap-around from the top of the range to 0.
		{[]uint32{0xFFFFFFFF, 0}, []span{{0xFFFFFFFF, 0xFFFFFFFF}, {0, 0}}},
	}
	for _, tt := range tests {
		if got := compress(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("compress(%#x) = %#x; want %#x", tt.in, got, tt.want)
		}
	}
}

func TestPVFeatureNames(t *testing.T) {
	tests := []struct {
		eax  uint32
		want []string
	}{
		{0, []string{}},
		// What KVM on a 6.x host offered to a QEMU -cpu host guest.
		{0x1007efb, []string{"CLOCKSOURCE", "NOP_IO_DELAY", "CLOCKSOURCE2", "ASYNC_PF", "STEAL_TIME",
			"PV_EOI", "PV_UNHALT", "PV_TLB_FLUSH", "ASYNC_PF_VMEXIT", "PV_SEND_IPI", "POLL_CONTROL",
			"PV_SCHED_YIELD", "ASYNC_PF_INT", "CLOCKSOURCE_STABLE_BIT"}},
		{1<<2 | 1<<15 | 1<<16 | 1<<17, []string{"MMU_OP", "MSI_EXT_DEST_ID", "HC_MAP_GPA_RANGE", "MIGRATION_CONTROL"}},
		{1<<8 | 1<<18 | 1<<31, []string{"bit8", "bit18", "bit31"}},
	}
	for _, tt := range tests {
		if got := pvFeatureNames(tt.eax); !slices.Equal(got, tt.want) || got == nil {
			t.Errorf("pvFeatureNames(%#x) = %#v; want %q", tt.eax, got, tt.want)
		}
	}
	// The bit numbers of Linux's arch/x86/include/uapi/asm/kvm_para.h.
	for bit, name := range map[uint]string{0: "CLOCKSOURCE", 3: "CLOCKSOURCE2", 7: "PV_UNHALT",
		9: "PV_TLB_FLUSH", 13: "PV_SCHED_YIELD", 14: "ASYNC_PF_INT", 17: "MIGRATION_CONTROL",
		24: "CLOCKSOURCE_STABLE_BIT"} {
		if got := kvmFeatureNames[bit]; got != name {
			t.Errorf("bit %d is %q; want %q", bit, got, name)
		}
	}
}

// regs packs a 12-byte signature into EBX, ECX, EDX.
func regs(sig string) (uint32, uint32, uint32) {
	b := make([]byte, 12)
	copy(b, sig)
	le := func(p []byte) uint32 { return uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24 }
	return le(b[0:4]), le(b[4:8]), le(b[8:12])
}

type leaf struct{ eax, ebx, ecx, edx uint32 }

func fakeCPUID(leaves map[uint32]leaf) func(uint32, uint32) (uint32, uint32, uint32, uint32) {
	return func(l, _ uint32) (uint32, uint32, uint32, uint32) {
		r := leaves[l]
		return r.eax, r.ebx, r.ecx, r.edx
	}
}

func sigLeaf(eax uint32, sig string) leaf {
	b, c, d := regs(sig)
	return leaf{eax, b, c, d}
}

func TestScanCPUID(t *testing.T) {
	t.Run("kvm", func(t *testing.T) {
		hv := scanCPUID(fakeCPUID(map[uint32]leaf{
			0:          {eax: 0xd},
			1:          {ecx: 1 << 31},
			0x40000000: sigLeaf(0x40000001, "KVMKVMKVM"),
			0x40000001: {eax: 0x1007efb, edx: 1},
		}))
		want := cpuidHV{HypervisorBit: true, Leaves: []hvLeaf{{0x40000000, 0x40000001, "KVMKVMKVM"}},
			KVMBase: 0x40000000, KVMFeatures: 0x1007efb, KVMHints: 1}
		if !reflect.DeepEqual(hv, want) {
			t.Errorf("scanCPUID = %+v; want %+v", hv, want)
		}
	})
	t.Run("hyper-v first, KVM at 0x40000100, max leaf 0", func(t *testing.T) {
		hv := scanCPUID(fakeCPUID(map[uint32]leaf{
			0:          {eax: 0xd},
			1:          {ecx: 1 << 31},
			0x40000000: sigLeaf(0x4000000b, "Microsoft Hv"),
			0x40000100: sigLeaf(0, "KVMKVMKVM"),
			0x40000101: {eax: 0x3},
			// Garbage from an out-of-range leaf: not printable.
			0x40000200: {eax: 0x40000201, ebx: 0x01020304, ecx: 0x41414141, edx: 0},
			// A printable signature with an impossible max leaf.
			0x40000300: sigLeaf(0xd, "GenuineIntel"),
		}))
		want := cpuidHV{HypervisorBit: true, Leaves: []hvLeaf{{0x40000000, 0x4000000b, "Microsoft Hv"}, {0x40000100, 0, "KVMKVMKVM"}},
			KVMBase: 0x40000100, KVMFeatures: 0x3}
		if !reflect.DeepEqual(hv, want) {
			t.Errorf("scanCPUID = %+v; want %+v", hv, want)
		}
	})
	t.Run("bare metal", func(t *testing.T) {
		hv := scanCPUID(fakeCPUID(map[uint32]leaf{0: {eax: 0xd}}))
		if hv.HypervisorBit || len(hv.Leaves) != 0 || hv.Leaves == nil || hv.KVMBase != 0 {
			t.Errorf("scanCPUID = %+v; want no hypervisor, empty leaves", hv)
		}
	})
}

func TestSignature(t *testing.T) {
	b, c, d := regs("XenVMMXenVMM")
	if s, ok := signature(b, c, d); !ok || s != "XenVMMXenVMM" {
		t.Errorf("signature(Xen) = %q, %v", s, ok)
	}
	if s, ok := signature(0, 0, 0); ok {
		t.Errorf("signature(zeros) = %q, true; want invalid", s)
	}
	if s, ok := signature(0x00414141, 0x41414141, 0); ok {
		t.Errorf("signature(NUL inside) = %q, true; want invalid", s)
	}
}

// fakePorts is /dev/port with a few live ports.
type fakePorts map[int64]byte

func (f fakePorts) ReadAt(p []byte, off int64) (int, error) {
	if len(p) != 1 {
		return 0, errors.New("port reads must be 1 byte")
	}
	if off >= numPorts {
		return 0, io.EOF
	}
	p[0] = 0xFF
	if v, ok := f[off]; ok {
		p[0] = v
	}
	return 1, nil
}

func TestScanPorts(t *testing.T) {
	live, err := scanPorts(fakePorts{0x20: 0, 0x21: 0xb8, 0x3f8: 0x41, 0x3fd: 0x60, 0xcf9: 0xFF, 0xffff: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []portValue{{0x20, 0}, {0x21, 0xb8}, {0x3f8, 0x41}, {0x3fd, 0x60}, {0xffff, 1}}
	if !slices.Equal(live, want) {
		t.Errorf("scanPorts = %#v; want %#v", live, want)
	}
}

// fakeMSRs is /dev/cpu/0/msr: EIO for MSRs not in the map, and another
// error for the index in fail.
type fakeMSRs struct {
	values map[int64]uint64
	fail   int64
}

func (f fakeMSRs) ReadAt(p []byte, off int64) (int, error) {
	if len(p) != 8 {
		return 0, unix.EINVAL
	}
	if off == f.fail {
		return 0, unix.ENXIO
	}
	v, ok := f.values[off]
	if !ok {
		return 0, unix.EIO
	}
	for i := range 8 {
		p[i] = byte(v >> (8 * i))
	}
	return 8, nil
}

func TestScanMSRs(t *testing.T) {
	f := fakeMSRs{values: map[int64]uint64{0x10: 0x1122334455667788, 0x1b: 0xfee00d00, 0x802: 0, 0xc0000080: 0xd01, 0x4b564d00: 5}, fail: -1}
	got, err := scanMSRs(f, msrRanges)
	if err != nil {
		t.Fatal(err)
	}
	want := []msrValue{{0x10, 0x1122334455667788}, {0x1b, 0xfee00d00}, {0x802, 0}, {0x4b564d00, 5}, {0xc0000080, 0xd01}}
	if !slices.Equal(got, want) {
		t.Errorf("scanMSRs = %#v; want %#v", got, want)
	}
	f.fail = 0x11
	if _, err := scanMSRs(f, msrRanges); !errors.Is(err, unix.ENXIO) {
		t.Errorf("scanMSRs with a failing device: %v; want ENXIO", err)
	}
}

func TestProbeJSON(t *testing.T) {
	r := probeResult{
		Ports:       []portValue{{0x3f8, 0}, {0x3f9, 0}, {0x3fd, 0x60}},
		MSRs:        []msrValue{{0x10, 1 << 63}, {0x802, 0}, {0xc0000080, 0xd01}},
		MSRsScanned: msrRanges,
		CPUIDHV:     cpuidHV{HypervisorBit: true, Leaves: []hvLeaf{{0x40000000, 0x40000001, "KVMKVMKVM"}}, KVMBase: 0x40000000, KVMFeatures: 0x9},
		PVFeatures:  pvFeatureNames(0x9),
		TotalMillis: 1234,
	}
	r.summarize()
	var out bytes.Buffer
	if err := writeProbeJSON(&out, r); err != nil {
		t.Fatal(err)
	}
	line := out.String()
	if !strings.HasPrefix(line, ProbeMarker+"{") || !strings.HasSuffix(line, "}\n") || strings.Count(line, "\n") != 1 {
		t.Fatalf("output is not one marker line: %q", line)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, ProbeMarker)), &m); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"live_ports":                   3.0,
		"readable_msrs":                3.0,
		"readable_msrs_outside_x2apic": 2.0,
		"total_ms":                     1234.0,
	} {
		if m[key] != want {
			t.Errorf("%s = %v; want %v", key, m[key], want)
		}
	}
	for _, key := range []string{"ports", "port_ranges", "msrs", "msr_ranges", "msrs_scanned", "pv_features"} {
		if _, ok := m[key].([]any); !ok {
			t.Errorf("%s = %#v; want an array", key, m[key])
		}
	}
	if _, ok := m["cpuid_hv"].(map[string]any); !ok {
		t.Errorf("cpuid_hv = %#v; want an object", m["cpuid_hv"])
	}
	for _, key := range []string{"port_error", "msr_error"} {
		if _, ok := m[key]; ok {
			t.Errorf("%s present without an error", key)
		}
	}

	// Round trip, with the large MSR value exact.
	var back probeResult
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, ProbeMarker)), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("round trip: got %+v; want %+v", back, r)
	}
	if want := []span{{0x3f8, 0x3f9}, {0x3fd, 0x3fd}}; !reflect.DeepEqual(back.PortRanges, want) {
		t.Errorf("port_ranges = %#x; want %#x", back.PortRanges, want)
	}
	if want := []string{"CLOCKSOURCE", "CLOCKSOURCE2"}; !slices.Equal(back.PVFeatures, want) {
		t.Errorf("pv_features = %q; want %q", back.PVFeatures, want)
	}

	// Nothing found: empty arrays, not null.
	empty := probeResult{PortError: "ports: no /dev/port"}
	empty.summarize()
	out.Reset()
	if err := writeProbeJSON(&out, empty); err != nil {
		t.Fatal(err)
	}
	for _, frag := range []string{`"ports":[]`, `"msrs":[]`, `"pv_features":[]`, `"port_ranges":[]`, `"port_error":"ports: no /dev/port"`} {
		if !strings.Contains(out.String(), frag) {
			t.Errorf("empty result %s lacks %s", out.String(), frag)
		}
	}
}

func TestProbeText(t *testing.T) {
	var ports []portValue
	for p := uint16(0xc000); p < 0xc020; p++ {
		ports = append(ports, portValue{p, 0})
	}
	r := probeResult{Ports: append([]portValue{{0x20, 0x11}}, ports...), MSRs: []msrValue{{0x10, 1}},
		MSRsScanned: msrRanges, PVFeatures: []string{}}
	r.summarize()
	var out bytes.Buffer
	if err := writeProbeText(&out, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"live ports: 33 of 65536, in 2 ranges",
		"  0x0020       11\n",
		"  0xc000-c01f  00 00",
		"... (32 ports)",
		"readable MSRs: 1 of 25344 read, 1 outside x2APIC",
		"  0x00000010           (1)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestProbeUsage(t *testing.T) {
	for _, args := range [][]string{{"probe", "extra"}, {"probe", "--bogus"}, {"probe", "--msr-module"}} {
		if err := run(args, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v; want the usage error", args, err)
		}
	}
}
