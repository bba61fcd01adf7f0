package snapshots

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	digest "github.com/opencontainers/go-digest"

	"github.com/bunkerbuild/bunkerbuild/internal/jsonstrict"
)

// Config describes the snapshotted machine. It is the artifact's config
// blob, so the signature covers it through the manifest.
type Config struct {
	Format  string `json:"format"`  // FormatName
	Version int    `json:"version"` // FormatVersion

	Created        time.Time `json:"created"`                   // when the snapshot was taken, UTC
	BuilderVersion string    `json:"builder_version,omitempty"` // bunkerbuild that took it

	BootProfile   string `json:"boot_profile"`   // the device profile the guest booted on
	ResumeProfile string `json:"resume_profile"` // the device profile it resumes on
	// InventoryDigest identifies the builder's device inventory.
	InventoryDigest digest.Digest `json:"inventory_digest"`

	VCPUs int `json:"vcpus"`
	// CPUID is vCPU 0's CPUID; the others differ only in APIC IDs. The
	// vCPU state repeats each vCPU's; this copy lets a host check that it
	// can run the guest's CPU without reading the state.
	CPUID  []CPUIDEntry `json:"cpuid"`
	Memory Memory       `json:"memory"`
	// Disks are the guest's disks, as captured; disk i is the layer after
	// the memory chunks and the disks before it.
	Disks []Disk `json:"disks,omitempty"`

	Recipe *Source `json:"recipe,omitempty"` // the recipe the guest was built from
	Kernel *Source `json:"kernel,omitempty"` // the guest kernel
	Initrd *Source `json:"initrd,omitempty"` // the guest initramfs
	// Firmware is the BIOS image of a guest booted from a disk.
	Firmware *Source `json:"firmware,omitempty"`

	Labels map[string]string `json:"labels,omitempty"`
}

// CPUIDEntry is one CPUID leaf as the guest sees it.
type CPUIDEntry struct {
	Function uint32 `json:"function"`
	Index    uint32 `json:"index"`
	Flags    uint32 `json:"flags"`
	EAX      uint32 `json:"eax"`
	EBX      uint32 `json:"ebx"`
	ECX      uint32 `json:"ecx"`
	EDX      uint32 `json:"edx"`
}

// Source identifies an input of the build.
type Source struct {
	Name    string        `json:"name"`              // a file name or recipe name
	Release string        `json:"release,omitempty"` // a kernel's version string
	Digest  digest.Digest `json:"digest"`            // of the file's bytes
}

// Memory is the guest's memory layout and which chunks of it are stored.
type Memory struct {
	PageSize  uint64   `json:"page_size"`  // PageSize
	ChunkSize uint64   `json:"chunk_size"` // ChunkSize
	Regions   []Region `json:"regions"`    // sorted by GPA, disjoint
	// Chunks lists the chunks with a non-zero page, sorted by GPA; chunk
	// i is the manifest's layer i+2. Memory outside them is zero.
	Chunks []Chunk `json:"chunks"`
}

// Region is a range of guest-physical RAM.
type Region struct {
	GPA  uint64 `json:"gpa"`
	Size uint64 `json:"size"`
}

// Chunk is a stored chunk of guest memory.
type Chunk struct {
	GPA   uint64 `json:"gpa"`
	Size  uint64 `json:"size"`  // ChunkSize, or less at the end of a region
	Pages uint64 `json:"pages"` // non-zero pages stored, 1 to Size/PageSize
}

// Disk is a captured virtio-blk disk.
type Disk struct {
	ID       string `json:"id"`   // the guest's serial number of the disk
	Size     uint64 `json:"size"` // bytes, a multiple of 512
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Size returns the total size of guest memory.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.Regions {
		n += r.Size
	}
	return n
}

// StoredPages returns the number of pages the chunks store.
func (m *Memory) StoredPages() uint64 {
	var n uint64
	for _, c := range m.Chunks {
		n += c.Pages
	}
	return n
}

func encodeConfig(c *Config) ([]byte, error) { return json.Marshal(c) }

// decodeConfig decodes and validates an untrusted config.
func decodeConfig(b []byte) (*Config, error) {
	var c Config
	if err := jsonstrict.Decode(b, &c); err != nil {
		return nil, fmt.Errorf("%w: config: %w", ErrMalformed, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks every field of c. The writer calls it too, so that it
// never writes what a reader refuses.
func (c *Config) Validate() error {
	if c.Format != FormatName {
		return fmt.Errorf("%w: config format %q, want %q", ErrMalformed, c.Format, FormatName)
	}
	if c.Version != FormatVersion {
		return fmt.Errorf("%w %d: this build reads version %d", ErrVersion, c.Version, FormatVersion)
	}
	if err := c.validateFields(); err != nil {
		return fmt.Errorf("%w: config: %w", ErrMalformed, err)
	}
	return c.Memory.validate()
}

func (c *Config) validateFields() error {
	if c.Created.IsZero() {
		return errors.New("created time is not set")
	}
	if y := c.Created.Year(); y < 2000 || y > 9999 {
		return fmt.Errorf("created time %v: year out of range 2000..9999", c.Created)
	}
	if c.BootProfile == "" || c.ResumeProfile == "" {
		return errors.New("boot_profile and resume_profile must be set")
	}
	for _, f := range []struct{ name, v string }{
		{"builder_version", c.BuilderVersion},
		{"boot_profile", c.BootProfile},
		{"resume_profile", c.ResumeProfile},
	} {
		if err := validText(f.v); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if c.InventoryDigest != "" {
		if err := checkDigest(c.InventoryDigest); err != nil {
			return fmt.Errorf("inventory_digest: %w", err)
		}
	}
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return fmt.Errorf("vcpus %d out of range 1..%d", c.VCPUs, MaxVCPUs)
	}
	if len(c.CPUID) == 0 || len(c.CPUID) > MaxCPUIDEntries {
		return fmt.Errorf("%d CPUID entries, want 1..%d", len(c.CPUID), MaxCPUIDEntries)
	}
	for name, s := range map[string]*Source{"recipe": c.Recipe, "kernel": c.Kernel, "initrd": c.Initrd, "firmware": c.Firmware} {
		if s == nil {
			continue
		}
		if err := validText(s.Name); err != nil {
			return fmt.Errorf("%s name: %w", name, err)
		}
		if err := validText(s.Release); err != nil {
			return fmt.Errorf("%s release: %w", name, err)
		}
		if err := checkDigest(s.Digest); err != nil {
			return fmt.Errorf("%s digest: %w", name, err)
		}
	}
	if len(c.Disks) > MaxDisks {
		return fmt.Errorf("%d disks, over %d", len(c.Disks), MaxDisks)
	}
	for i, d := range c.Disks {
		if err := validText(d.ID); err != nil || len(d.ID) > 20 {
			return fmt.Errorf("disk %d id %.40q: want at most 20 bytes of text", i, d.ID)
		}
		if d.Size == 0 || d.Size%512 != 0 || d.Size > MaxDiskSize {
			return fmt.Errorf("disk %d: size %d is not a positive multiple of 512 up to %d", i, d.Size, uint64(MaxDiskSize))
		}
	}
	if len(c.Labels) > MaxLabels {
		return fmt.Errorf("%d labels, over %d", len(c.Labels), MaxLabels)
	}
	for k, v := range c.Labels {
		if err := validName(k); err != nil {
			return fmt.Errorf("label key: %w", err)
		}
		if err := validText(v); err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
	}
	return nil
}

// validName accepts label keys: 1 to MaxNameLen bytes of [a-z0-9._/-],
// starting with a letter or digit.
func validName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("name %.40q: want 1 to %d bytes", name, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		ok := ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || i > 0 && (ch == '.' || ch == '_' || ch == '/' || ch == '-')
		if !ok {
			return fmt.Errorf("name %.40q: byte %d is not one of [a-z0-9._/-] (or starts the name)", name, i)
		}
	}
	return nil
}

// validText accepts UTF-8 text without control characters, so that a
// config printed on a terminal cannot move the cursor or change colours.
func validText(s string) error {
	if len(s) > MaxTextLen {
		return fmt.Errorf("%d bytes, over %d", len(s), MaxTextLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%.40q is not valid UTF-8", s)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%.40q contains control character %U", s, r)
		}
	}
	return nil
}

// validate checks the memory layout and the chunk list.
func (m *Memory) validate() error {
	if m.PageSize != PageSize || m.ChunkSize != ChunkSize {
		return fmt.Errorf("%w: memory page size %d and chunk size %d, want %d and %d", ErrMalformed, m.PageSize, m.ChunkSize, PageSize, ChunkSize)
	}
	if len(m.Regions) == 0 {
		return fmt.Errorf("%w: memory has no regions", ErrMalformed)
	}
	if len(m.Regions) > MaxRegions {
		return fmt.Errorf("%w: %d memory regions, over %d", ErrLimit, len(m.Regions), MaxRegions)
	}
	var total, prevEnd uint64
	for i, r := range m.Regions {
		switch {
		case r.Size == 0 || r.GPA%PageSize != 0 || r.Size%PageSize != 0:
			return fmt.Errorf("%w: memory region %d (GPA %#x, %#x bytes) is empty or not page-aligned", ErrMalformed, i, r.GPA, r.Size)
		case r.GPA+r.Size < r.GPA:
			return fmt.Errorf("%w: memory region %d (GPA %#x, %#x bytes) wraps around the address space", ErrMalformed, i, r.GPA, r.Size)
		case i > 0 && r.GPA < prevEnd:
			return fmt.Errorf("%w: memory region %d at %#x overlaps or precedes region %d ending at %#x", ErrMalformed, i, r.GPA, i-1, prevEnd)
		}
		prevEnd = r.GPA + r.Size
		total += r.Size // cannot overflow: the regions are disjoint and below 2^64
		if total > MaxMemorySize {
			return fmt.Errorf("%w: memory regions total over %d bytes", ErrLimit, uint64(MaxMemorySize))
		}
	}
	if len(m.Chunks) > MaxChunks {
		return fmt.Errorf("%w: %d memory chunks, over %d", ErrLimit, len(m.Chunks), MaxChunks)
	}
	for i, c := range m.Chunks {
		if i > 0 && c.GPA <= m.Chunks[i-1].GPA {
			return fmt.Errorf("%w: memory chunk %d at %#x is not after chunk %d at %#x", ErrMalformed, i, c.GPA, i-1, m.Chunks[i-1].GPA)
		}
		if want, ok := m.chunkAt(c.GPA); !ok || c.Size != want {
			return fmt.Errorf("%w: memory chunk %d (GPA %#x, %#x bytes) is not a chunk of the memory regions", ErrMalformed, i, c.GPA, c.Size)
		}
		if c.Pages == 0 || c.Pages > c.Size/PageSize {
			return fmt.Errorf("%w: memory chunk %d at %#x stores %d pages, want 1..%d", ErrMalformed, i, c.GPA, c.Pages, c.Size/PageSize)
		}
	}
	return nil
}

// chunkAt returns the size of the chunk that starts at gpa, if one does:
// chunks start at ChunkSize multiples from a region's start and end at the
// next one or the region's end.
func (m *Memory) chunkAt(gpa uint64) (uint64, bool) {
	for _, r := range m.Regions {
		if gpa < r.GPA || gpa-r.GPA >= r.Size {
			continue
		}
		off := gpa - r.GPA
		if off%ChunkSize != 0 {
			return 0, false
		}
		return min(ChunkSize, r.Size-off), true
	}
	return 0, false
}

// encoding returns the layer media type a chunk is stored with.
func (c Chunk) encoding() string {
	n := c.Size / PageSize
	if c.Pages >= n-n/rawThreshold {
		return MediaTypeMemoryRaw
	}
	return MediaTypeMemorySparse
}

// storedSize returns the size of the chunk's layer.
func (c Chunk) storedSize() uint64 {
	if c.encoding() == MediaTypeMemoryRaw {
		return c.Size
	}
	return PageSize + c.Pages*PageSize // the header page, then the pages
}

// bitmapLen is the size of a sparse chunk's page bitmap, at the start of
// its header page: at most PageSize, as ChunkSize/PageSize/8 is.
func bitmapLen(size uint64) uint64 { return (size/PageSize + 7) / 8 }
