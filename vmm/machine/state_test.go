package machine

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

func validState() *State {
	v := VCPUState{MPState: kvm.MPStateRunnable, XSave: make([]byte, 4096), CPUID: []kvm.CPUIDEntry{{Function: 0}}}
	v.Sregs.CR0 = 1<<31 | 1
	v.Sregs.EFER = 1<<10 | 1<<8
	st := &State{Version: StateVersion, CPUs: 2, Memory: 512 << 20, VCPUs: []VCPUState{v, v}}
	for i := range st.IOAPIC.Redir {
		st.IOAPIC.Redir[i] = 1 << 16
	}
	return st
}

func TestValidateState(t *testing.T) {
	if err := validState().Validate(); err != nil {
		t.Fatalf("valid state refused: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*State)
		want   string
	}{
		{"version", func(s *State) { s.Version = 9 }, "version"},
		{"vcpu count", func(s *State) { s.CPUs = 3 }, "vCPU"},
		{"no vcpus", func(s *State) { s.CPUs, s.VCPUs = 0, nil }, "vCPU"},
		{"memory", func(s *State) { s.Memory = 12345 }, "memory"},
		{"huge memory", func(s *State) { s.Memory = 1 << 50 }, "memory"},
		{"short xsave", func(s *State) { s.VCPUs[1].XSave = nil }, "XSAVE"},
		{"no cpuid", func(s *State) { s.VCPUs[0].CPUID = nil }, "CPUID"},
		{"mp state", func(s *State) { s.VCPUs[0].MPState = 77 }, "MP state"},
		{"ioapic vector", func(s *State) { s.IOAPIC.Redir[4] = 0x05 }, "IOAPIC"},
	} {
		s := validState()
		tc.mutate(s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
	var nilState *State
	if err := nilState.Validate(); err == nil {
		t.Error("nil state accepted")
	}
}

// FuzzStateValidate feeds mutated state blobs, as an artifact carries them,
// to the decoder and the validator that run before Restore touches KVM.
// FuzzStateValidate feeds mutated artifact state layers to the decoder
// and the validator that resume runs before anything reaches KVM.
func FuzzStateValidate(f *testing.F) {
	st := validState()
	vcpus, devices, err := st.MarshalLayers()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(vcpus, devices)
	f.Add([]byte(`{"version":1,"vcpus":[{}]}`), []byte(`{"version":1,"cpus":1,"memory":67108864}`))
	f.Fuzz(func(t *testing.T, vcpus, devices []byte) {
		st, err := UnmarshalLayers(vcpus, devices)
		if err != nil {
			return
		}
		_ = st.Validate()
	})
}

func TestStateLayersRoundTrip(t *testing.T) {
	st := validState()
	vcpus, devices, err := st.MarshalLayers()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalLayers(vcpus, devices)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(st)
	b, _ := json.Marshal(got)
	if string(a) != string(b) {
		t.Errorf("round trip changed the state:\n%s\n%s", a, b)
	}
	if _, err := UnmarshalLayers(vcpus, append(devices[:len(devices)-1:len(devices)-1], []byte(`,"extra":1}`)...)); err == nil {
		t.Error("an unknown field in the device layer was accepted")
	}
	if _, err := UnmarshalLayers([]byte(`{"version":1,"vcpus":[]}`), devices); err == nil {
		t.Error("layers of different versions were accepted")
	}
}

func TestCheckCPUIDCompatible(t *testing.T) {
	amd := kvm.CPUIDEntry{Function: 0, EAX: 0x10, EBX: 0x68747541, ECX: 0x444d4163, EDX: 0x69746e65}   // "AuthenticAMD"
	intel := kvm.CPUIDEntry{Function: 0, EAX: 0x10, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69} // "GenuineIntel"
	host := []kvm.CPUIDEntry{amd,
		{Function: 1, ECX: 0x80000001, EDX: 0xff},
		{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0x0f},
		{Function: 7, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0x10},
	}
	for _, tc := range []struct {
		name  string
		saved []kvm.CPUIDEntry
		want  string // in the error; "" for compatible
	}{
		{"same", host, ""},
		{"fewer features", []kvm.CPUIDEntry{amd, {Function: 1, ECX: 1, EDX: 0x0f}, {Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0x01}}, ""},
		{"other vendor", []kvm.CPUIDEntry{intel}, `vendor "GenuineIntel" is not this host's "AuthenticAMD"`},
		{"leaf 1 bit", []kvm.CPUIDEntry{amd, {Function: 1, ECX: 0x80000003}}, "leaf 0x1.0 ECX bits 0x2"},
		{"bits the guest sets itself", []kvm.CPUIDEntry{amd, {Function: 1, ECX: 1 << 27, EDX: 1 << 9}, {Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, ECX: 1 << 4}}, ""},
		{"leaf 7.0 bit", []kvm.CPUIDEntry{amd, {Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0x30}}, "leaf 0x7.0 EBX bits 0x30"},
		{"leaf 7.1 bit", []kvm.CPUIDEntry{amd, {Function: 7, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0x11}}, "leaf 0x7.1 EAX bits 0x1"},
		{"leaf absent on host", []kvm.CPUIDEntry{amd, {Function: 0x80000001, EDX: 1}}, "leaf 0x80000001.0 EDX bits 0x1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCPUIDCompatible(tc.saved, host)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
