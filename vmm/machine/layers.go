package machine

import (
	"encoding/json"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/internal/jsonstrict"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/acpipm"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/ioapic"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/serial"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// vcpuLayer and deviceLayer are State split the way an artifact stores
// it: the vCPUs' state, and the machine's and its devices'.
type vcpuLayer struct {
	Version int         `json:"version"`
	VCPUs   []VCPUState `json:"vcpus"`
}

type deviceLayer struct {
	Version int           `json:"version"`
	CPUs    int           `json:"cpus"`
	Memory  uint64        `json:"memory"`
	IOAPIC  ioapic.State  `json:"ioapic"`
	Clock   kvm.ClockData `json:"clock"`
	PM      acpipm.State  `json:"acpi_pm"`
	Serial  *serial.State `json:"serial,omitempty"`
	PCI     *PCIState     `json:"pci,omitempty"`
}

// MarshalLayers encodes st as two parts: the vCPUs' state and the
// devices' (with the machine's size).
func (st *State) MarshalLayers() (vcpus, devices []byte, err error) {
	if vcpus, err = json.Marshal(vcpuLayer{Version: st.Version, VCPUs: st.VCPUs}); err != nil {
		return nil, nil, err
	}
	devices, err = json.Marshal(deviceLayer{Version: st.Version, CPUs: st.CPUs, Memory: st.Memory,
		IOAPIC: st.IOAPIC, Clock: st.Clock, PM: st.PM, Serial: st.Serial, PCI: st.PCI})
	return vcpus, devices, err
}

// UnmarshalLayers decodes what MarshalLayers encoded, strictly: unknown
// fields and trailing data are errors. The result is not validated; call
// Validate or let Restore do it.
func UnmarshalLayers(vcpus, devices []byte) (*State, error) {
	var v vcpuLayer
	if err := jsonstrict.Decode(vcpus, &v); err != nil {
		return nil, fmt.Errorf("vCPU state: %w", err)
	}
	var d deviceLayer
	if err := jsonstrict.Decode(devices, &d); err != nil {
		return nil, fmt.Errorf("device state: %w", err)
	}
	if v.Version != d.Version {
		return nil, fmt.Errorf("vCPU state version %d, device state version %d", v.Version, d.Version)
	}
	return &State{Version: d.Version, CPUs: d.CPUs, Memory: d.Memory, VCPUs: v.VCPUs,
		IOAPIC: d.IOAPIC, Clock: d.Clock, PM: d.PM, Serial: d.Serial, PCI: d.PCI}, nil
}
