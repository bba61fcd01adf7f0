package pipeline

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Resume verifies the artifact at path against pub and restores its guest
// on the minimal VMM that cfg describes (its policy, console and log; the
// profile is always minimal, and the vCPUs and memory are the artifact's).
// Nothing from the artifact reaches KVM before the signature and the
// digest of each part have been checked.
func Resume(path string, pub ed25519.PublicKey, cfg machine.Config) (*machine.Machine, snapshots.Manifest, error) {
	a, err := snapshots.Open(path, pub)
	if err != nil {
		return nil, snapshots.Manifest{}, err
	}
	defer a.Close()
	man := a.Manifest()
	b, err := a.Blob(StateBlob)
	if err != nil {
		return nil, man, err
	}
	var st machine.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, man, fmt.Errorf("artifact %s: blob %q: %w", path, StateBlob, err)
	}
	if got := man.MemorySize(); got != st.Memory || man.VCPUs != st.CPUs {
		return nil, man, fmt.Errorf("artifact %s: manifest says %d vCPUs and %d bytes of memory, the machine state %d and %d", path, man.VCPUs, got, st.CPUs, st.Memory)
	}
	cfg.Profile = inventory.Minimal
	m, err := machine.Restore(cfg, &st, func(g *memory.Guest) error {
		regions, maps := g.Regions()
		var mr []snapshots.MemRegion
		for i, r := range regions {
			mr = append(mr, snapshots.MemRegion{GPA: r.GPA, Data: maps[i]})
		}
		return a.RestoreMemory(mr)
	})
	return m, man, err
}
