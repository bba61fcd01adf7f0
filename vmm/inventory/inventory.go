// Package inventory is the single source of truth for every entry point a
// guest can reach: I/O port ranges, MMIO ranges, MSRs, paravirtual features
// and in-kernel KVM devices. Each entry names its owner, its class and the
// device profiles that offer it.
//
// Device registration, the KVM MSR filter, the paravirtual CPUID bits, the
// surface report and the tests all read this table. No port number, MMIO
// address or interrupt line appears anywhere else in the code base.
package inventory

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Space is the address space an entry lives in.
type Space uint8

const (
	SpacePIO    Space = iota + 1 // I/O port range
	SpaceMMIO                    // guest-physical MMIO range
	SpaceMSR                     // model-specific register range
	SpacePV                      // paravirtual feature or hypercall
	SpaceKernel                  // device emulated inside KVM
	SpacePCI                     // PCI device slots on bus 0, reached through the PCI host's entries
)

func (s Space) String() string {
	switch s {
	case SpacePIO:
		return "pio"
	case SpaceMMIO:
		return "mmio"
	case SpaceMSR:
		return "msr"
	case SpacePV:
		return "pv"
	case SpaceKernel:
		return "kvm"
	case SpacePCI:
		return "pci"
	}
	return fmt.Sprintf("space(%d)", uint8(s))
}

// MarshalText writes the space's name, for JSON reports.
func (s Space) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Class says when a guest needs an entry.
type Class uint8

const (
	// Legacy entries are needed only while an OS boots.
	Legacy Class = iota + 1
	// Required entries are needed by a booted guest.
	Required
	// Console entries are extraneous devices offered only as an explicit
	// opt-in console.
	Console
)

func (c Class) String() string {
	switch c {
	case Legacy:
		return "legacy"
	case Required:
		return "required"
	case Console:
		return "console"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// MarshalText writes the class's name, for JSON reports.
func (c Class) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Profile is a device set a VMM can be started with.
type Profile uint8

const (
	// Full is the boot-time device set: legacy PC devices plus required ones.
	Full Profile = 1 << iota
	// Minimal is the production device set: required devices only.
	Minimal
	// Firmware is the PC platform a BIOS needs, which a machine that
	// boots a disk through SeaBIOS offers on top of Full: fw_cfg, the
	// ROM, the A20 gate, the ISA bridge. Such a machine's profile is the
	// set FullFirmware.
	Firmware

	// FullFirmware is the profile of a machine booting through firmware.
	FullFirmware = Full | Firmware
)

// Profiles is a set of profiles.
type Profiles = Profile

func (p Profile) String() string {
	var names []string
	if p&Full != 0 {
		names = append(names, "full")
	}
	if p&Minimal != 0 {
		names = append(names, "minimal")
	}
	if p&Firmware != 0 {
		names = append(names, "firmware")
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "+")
}

// MarshalText writes the profile set, for JSON reports.
func (p Profile) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// ParseProfile returns the profile named s.
func ParseProfile(s string) (Profile, error) {
	switch s {
	case "full":
		return Full, nil
	case "minimal":
		return Minimal, nil
	case "full+firmware":
		return FullFirmware, nil
	}
	return 0, fmt.Errorf("unknown device profile %q (want full, full+firmware or minimal)", s)
}

// ID names an entry. Devices find their resources by ID.
type ID string

// Entry is one guest-reachable entry point.
type Entry struct {
	ID       ID       `json:"id"`
	Space    Space    `json:"space"`
	Base     uint64   `json:"base"` // first port, address or MSR index; the bit of a PV feature; the first PCI slot
	Size     uint64   `json:"size"` // number of ports, bytes, MSRs or PCI slots; 1 for PV and KVM entries
	Class    Class    `json:"class"`
	Owner    string   `json:"owner"`     // the device that serves it
	Profiles Profiles `json:"profiles"`  // the profiles that offer it
	IRQ      int      `json:"irq"`       // ISA interrupt line the owner raises, or -1
	InKernel bool     `json:"in_kernel"` // served by KVM itself, never by a userspace device
	Why      string   `json:"why"`       // why a guest needs it
}

// End returns the first address past the entry.
func (e Entry) End() uint64 { return e.Base + e.Size }

// Contains reports whether addr falls inside the entry.
func (e Entry) Contains(addr uint64) bool { return addr >= e.Base && addr-e.Base < e.Size }

// In reports whether profile p offers the entry.
func (e Entry) In(p Profile) bool { return e.Profiles&p != 0 }

func (e Entry) String() string {
	switch e.Space {
	case SpacePIO, SpaceMMIO, SpaceMSR:
		return fmt.Sprintf("%s %s %#x-%#x", e.ID, e.Space, e.Base, e.End()-1)
	case SpacePCI:
		return fmt.Sprintf("%s %s slots %d-%d", e.ID, e.Space, e.Base, e.End()-1)
	}
	return fmt.Sprintf("%s %s", e.ID, e.Space)
}

// Get returns the entry with the given ID.
func Get(id ID) (Entry, bool) {
	for _, e := range table {
		if e.ID == id {
			return e, true
		}
	}
	return Entry{}, false
}

// MustGet returns the entry with the given ID and panics if there is none.
// Use it only with the ID constants declared next to the table.
func MustGet(id ID) Entry {
	e, ok := Get(id)
	if !ok {
		panic(fmt.Sprintf("inventory: no entry %q", id))
	}
	return e
}

// All returns a copy of the whole table, ordered by space and base.
func All() []Entry {
	out := append([]Entry(nil), table...)
	sortEntries(out)
	return out
}

// For returns the entries profile p offers, ordered by space and base.
func For(p Profile) []Entry {
	var out []Entry
	for _, e := range table {
		if e.In(p) {
			out = append(out, e)
		}
	}
	sortEntries(out)
	return out
}

func sortEntries(es []Entry) {
	sort.Slice(es, func(i, j int) bool {
		if es[i].Space != es[j].Space {
			return es[i].Space < es[j].Space
		}
		if es[i].Base != es[j].Base {
			return es[i].Base < es[j].Base
		}
		return es[i].ID < es[j].ID
	})
}

// Digest returns "sha256:" and the hex SHA-256 of the table's JSON
// encoding, ordered as All orders it. Artifacts record it, so that a
// snapshot names the device surface it was built against.
func Digest() string {
	b, err := json.Marshal(All())
	if err != nil {
		panic(err) // the table holds only plain values
	}
	return fmt.Sprintf("sha256:%x", sha256.Sum256(b))
}
