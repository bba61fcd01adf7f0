package snapshots

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"
)

// Version is a format version.
type Version struct {
	Major uint16 `json:"major"`
	Minor uint16 `json:"minor"`
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// Metadata describes the snapshotted VM. The VMM supplies it to [Create].
type Metadata struct {
	Profile        string            `json:"profile"`                   // device profile the guest was booted with, e.g. "minimal"; required
	VCPUs          int               `json:"vcpus"`                     // number of vCPUs; 1 to MaxVCPUs
	KernelRelease  string            `json:"kernel_release,omitempty"`  // guest kernel release, e.g. "6.12.38+deb12-amd64"
	Recipe         string            `json:"recipe,omitempty"`          // recipe that produced the guest
	BuilderVersion string            `json:"builder_version,omitempty"` // version of bunkerbuild that took the snapshot
	Created        time.Time         `json:"created"`                   // when the snapshot was taken; stored in UTC; required
	Labels         map[string]string `json:"labels,omitempty"`          // free-form; keys follow ValidName, at most MaxLabels
}

// Manifest is the signed description of an artifact: the VM's metadata, its
// memory layout and every blob with its digest.
type Manifest struct {
	Format  string  `json:"format"` // FormatName
	Version Version `json:"version"`
	Metadata
	Memory *MemoryInfo `json:"memory,omitempty"` // nil when the artifact holds no guest memory
	Blobs  []BlobInfo  `json:"blobs"`            // sorted by name
}

// MemorySize returns the total size of guest memory, 0 if there is none.
func (m *Manifest) MemorySize() uint64 {
	if m.Memory == nil {
		return 0
	}
	var n uint64
	for _, r := range m.Memory.Regions {
		n += r.Size
	}
	return n
}

// MemoryInfo is the layout of guest memory.
type MemoryInfo struct {
	PageSize uint64   `json:"page_size"` // PageSize
	Regions  []Region `json:"regions"`   // sorted by GPA, disjoint
}

// Region is a range of guest-physical memory.
type Region struct {
	GPA  uint64 `json:"gpa"`
	Size uint64 `json:"size"`
}

// BlobInfo locates a blob in the file and gives its digest.
type BlobInfo struct {
	Name   string `json:"name"`
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
	SHA256 Digest `json:"sha256"`
}

// clone returns a deep copy of m.
func (m *Manifest) clone() Manifest {
	c := *m
	c.Labels = maps.Clone(m.Labels)
	c.Blobs = slices.Clone(m.Blobs)
	if m.Memory != nil {
		mem := *m.Memory
		mem.Regions = slices.Clone(m.Memory.Regions)
		c.Memory = &mem
	}
	return c
}

// encodeManifest returns the canonical encoding of m.
func encodeManifest(m *Manifest) ([]byte, error) {
	return json.Marshal(m)
}

// decodeManifest decodes b, which must be the canonical encoding of a
// manifest, and checks its fields; the blob layout is checked by the caller,
// which knows the file.
func decodeManifest(b []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrMalformed, err)
	}
	re, err := encodeManifest(&m)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: re-encoding: %w", ErrMalformed, err)
	}
	if !bytes.Equal(re, b) {
		return nil, fmt.Errorf("%w: manifest is not in canonical form (duplicate keys, extra whitespace or non-canonical values)", ErrMalformed)
	}
	if m.Format != FormatName {
		return nil, fmt.Errorf("%w: manifest format %q, want %q", ErrMalformed, m.Format, FormatName)
	}
	if m.Version.Major != MajorVersion {
		return nil, fmt.Errorf("%w %s in manifest: this build reads major version %d", ErrVersion, m.Version, MajorVersion)
	}
	if err := m.Metadata.validate(); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrMalformed, err)
	}
	if m.Memory != nil {
		if err := m.Memory.validate(); err != nil {
			return nil, err
		}
	}
	if len(m.Blobs) > MaxBlobs {
		return nil, fmt.Errorf("%w: %d blobs, over %d", ErrLimit, len(m.Blobs), MaxBlobs)
	}
	for i, bl := range m.Blobs {
		if err := ValidName(bl.Name); err != nil {
			return nil, fmt.Errorf("%w: blob %d: %w", ErrMalformed, i, err)
		}
		if i > 0 && m.Blobs[i-1].Name >= bl.Name {
			return nil, fmt.Errorf("%w: blob %q listed after %q: names must be unique and sorted", ErrMalformed, bl.Name, m.Blobs[i-1].Name)
		}
	}
	return &m, nil
}

// validate checks the metadata's fields.
func (md *Metadata) validate() error {
	if md.Profile == "" {
		return errors.New("profile is empty")
	}
	for _, f := range []struct{ name, v string }{
		{"profile", md.Profile},
		{"kernel_release", md.KernelRelease},
		{"recipe", md.Recipe},
		{"builder_version", md.BuilderVersion},
	} {
		if err := validText(f.v); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if md.VCPUs < 1 || md.VCPUs > MaxVCPUs {
		return fmt.Errorf("vcpus %d out of range 1..%d", md.VCPUs, MaxVCPUs)
	}
	if md.Created.IsZero() {
		return errors.New("created time is not set")
	}
	if y := md.Created.Year(); y < 1 || y > 9999 {
		return fmt.Errorf("created time %v: year out of range 1..9999", md.Created)
	}
	if len(md.Labels) > MaxLabels {
		return fmt.Errorf("%d labels, over %d", len(md.Labels), MaxLabels)
	}
	for k, v := range md.Labels {
		if err := ValidName(k); err != nil {
			return fmt.Errorf("label key: %w", err)
		}
		if err := validText(v); err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
	}
	return nil
}

// validText accepts UTF-8 text without control characters, so that a
// manifest printed on a terminal cannot move the cursor or change colours.
func validText(s string) error {
	if len(s) > MaxTextLen {
		return fmt.Errorf("%d bytes, over %d", len(s), MaxTextLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not valid UTF-8", s)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%q contains control character %U", s, r)
		}
	}
	return nil
}

// validate checks the memory layout on its own; the caller checks the memory
// blobs against it.
func (mi *MemoryInfo) validate() error {
	if mi.PageSize != PageSize {
		return fmt.Errorf("%w: memory page size %d, want %d", ErrMalformed, mi.PageSize, PageSize)
	}
	if len(mi.Regions) == 0 {
		return fmt.Errorf("%w: memory has no regions", ErrMalformed)
	}
	if len(mi.Regions) > MaxRegions {
		return fmt.Errorf("%w: %d memory regions, over %d", ErrLimit, len(mi.Regions), MaxRegions)
	}
	var total, prevEnd uint64
	for i, r := range mi.Regions {
		if err := checkRegion(r.GPA, r.Size); err != nil {
			return fmt.Errorf("%w: memory region %d: %w", ErrMalformed, i, err)
		}
		if i > 0 && r.GPA < prevEnd {
			return fmt.Errorf("%w: memory region %d at %#x overlaps or precedes region %d ending at %#x", ErrMalformed, i, r.GPA, i-1, prevEnd)
		}
		prevEnd = r.GPA + r.Size
		total += r.Size // cannot overflow: each region is below 2^64 - GPA and they are disjoint
		if total > MaxMemorySize {
			return fmt.Errorf("%w: memory regions total over %d bytes", ErrLimit, uint64(MaxMemorySize))
		}
	}
	return nil
}

// checkRegion checks one region's alignment, size and range.
func checkRegion(gpa, size uint64) error {
	switch {
	case size == 0:
		return fmt.Errorf("GPA %#x: empty", gpa)
	case gpa%PageSize != 0 || size%PageSize != 0:
		return fmt.Errorf("GPA %#x size %#x: not aligned to %d-byte pages", gpa, size, PageSize)
	case gpa+size < gpa:
		return fmt.Errorf("GPA %#x size %#x: wraps around the address space", gpa, size)
	}
	return nil
}
