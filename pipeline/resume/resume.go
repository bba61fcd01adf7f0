// Package resume restores a guest from a signed artifact onto the minimal
// VMM: the last stage of the pipeline, and the only one a production host
// runs.
package resume

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/bunkerbuild/bunkerbuild/snapshots"
	vnet "github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/net"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Resumed is a guest restored from an artifact, ready to run.
type Resumed struct {
	Machine *machine.Machine
	Digest  string           // the artifact's manifest digest
	Config  snapshots.Config // the artifact's verified config

	// Verify is the time spent checking the signature and every digest,
	// Restore the time from then until the machine was ready to run.
	Verify, Restore time.Duration
	// Hashed says the layers were hashed; if not, this host's stamp showed
	// it had verified these very files before (snapshots.StampFile).
	Hashed bool
}

// Artifact verifies the artifact at path against pub and restores its guest
// on the minimal VMM that cfg describes (its policy, console and log; the
// profile is always minimal, and the vCPUs and memory are the artifact's).
// Nothing from the artifact is mapped or reaches KVM before the signature
// and the digest of every blob have been checked, now or, by this host,
// on files nobody else could have changed since (snapshots.StampFile). Raw memory chunks are
// mapped copy-on-write from the artifact's files, so that guests resumed
// from one artifact share the pages they have not written.
func Artifact(path string, pub ed25519.PublicKey, cfg machine.Config) (*Resumed, error) {
	return ArtifactWith(path, pub, cfg, Options{})
}

// Options change how an artifact is resumed.
type Options struct {
	// CopyMemory copies guest memory out of the artifact instead of
	// mapping it copy-on-write: each guest then has its own copy, and the
	// artifact's files may change or go once the guest runs.
	CopyMemory bool

	// Disks names, by disk ID, where the writable copy of each captured
	// disk is made; the paths must not exist. Disks not named are copied
	// into a temporary directory that is removed when the machine closes,
	// so whatever the guest writes to them is lost. Read-only disks are
	// served from the artifact and never copied.
	Disks map[string]string
	// NIC attaches the guest's NIC, if it has one, to this link (a tap);
	// nil leaves it disconnected.
	NIC vnet.Link
}

// ArtifactWith is Artifact with options.
func ArtifactWith(path string, pub ed25519.PublicKey, cfg machine.Config, o Options) (*Resumed, error) {
	start := time.Now()
	a, err := snapshots.Open(path, pub)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	hashed, err := a.VerifyCached()
	if err != nil {
		return nil, err
	}
	res := &Resumed{Digest: a.Digest().String(), Config: a.Config(), Verify: time.Since(start), Hashed: hashed}
	if p := res.Config.ResumeProfile; p != inventory.Minimal.String() {
		return nil, fmt.Errorf("artifact %s resumes on profile %q; this VMM resumes on %q", path, p, inventory.Minimal)
	}
	vcpus, err := a.VCPUState()
	if err != nil {
		return nil, err
	}
	devices, err := a.DeviceState()
	if err != nil {
		return nil, err
	}
	st, err := machine.UnmarshalLayers(vcpus, devices)
	if err != nil {
		return nil, fmt.Errorf("artifact %s: %w", path, err)
	}
	if got := res.Config.Memory.Size(); got != st.Memory || res.Config.VCPUs != st.CPUs {
		return nil, fmt.Errorf("artifact %s: the config says %d vCPUs and %d bytes of memory, the machine state %d and %d", path, res.Config.VCPUs, got, st.CPUs, st.Memory)
	}
	cfg.Profile = inventory.Minimal
	for id := range o.Disks {
		if !slices.ContainsFunc(res.Config.Disks, func(d snapshots.Disk) bool { return d.ID == id }) {
			return nil, fmt.Errorf("artifact %s has no disk %q (it has %s)", path, id, diskIDs(res.Config.Disks))
		}
	}
	disks, cleanup, err := openDisks(a, o.Disks)
	if err != nil {
		return nil, fmt.Errorf("artifact %s: %w", path, err)
	}
	cfg.Disks = disks
	if o.NIC != nil {
		cfg.NIC = &machine.NIC{Link: o.NIC}
	}
	res.Machine, err = machine.Restore(cfg, st, func(g *memory.Guest) error {
		regions, maps := g.Regions()
		var dst []snapshots.MemRegion
		for i, r := range regions {
			dst = append(dst, snapshots.MemRegion{GPA: r.GPA, Data: maps[i]})
		}
		if o.CopyMemory {
			return a.RestoreMemory(dst, nil)
		}
		return a.RestoreMemory(dst, g.MapFile)
	})
	if err != nil {
		cleanup()
		return nil, err
	}
	res.Machine.OnClose(func() error { cleanup(); return nil })
	res.Restore = time.Since(start) - res.Verify
	return res, nil
}

// openDisks opens the artifact's disks for the machine: read-only ones
// from the artifact itself, writable ones as fresh copies of the captured
// image, at the path paths gives their ID or in a temporary directory.
// cleanup closes them and removes the temporary copies.
func openDisks(a *snapshots.Artifact, paths map[string]string) (_ []machine.Disk, cleanup func(), err error) {
	var files []*os.File
	var tmp string
	cleanup = func() {
		for _, f := range files {
			f.Close()
		}
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	var out []machine.Disk
	for i, d := range a.Disks() {
		var f *os.File
		if d.ReadOnly {
			if f, err = a.OpenDisk(i); err != nil {
				return nil, nil, fmt.Errorf("disk %s: %w", d.ID, err)
			}
		} else {
			p, ok := paths[d.ID]
			if !ok {
				if tmp == "" {
					if tmp, err = os.MkdirTemp("", "bunkerbuild-disks-"); err != nil {
						return nil, nil, err
					}
				}
				p = filepath.Join(tmp, d.ID+".img")
			}
			if err = a.CopyDisk(i, p); err != nil {
				return nil, nil, fmt.Errorf("disk %s: %w", d.ID, err)
			}
			if f, err = os.OpenFile(p, os.O_RDWR, 0); err != nil {
				return nil, nil, fmt.Errorf("disk %s: %w", d.ID, err)
			}
		}
		files = append(files, f)
		out = append(out, machine.Disk{File: f, ReadOnly: d.ReadOnly, ID: d.ID})
	}
	return out, cleanup, nil
}

func diskIDs(ds []snapshots.Disk) string {
	if len(ds) == 0 {
		return "none"
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	return strings.Join(ids, ", ")
}
