package snapshots

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Extent is a run of non-zero guest pages stored in the artifact.
type Extent struct {
	GPA uint64
	Len uint64
}

// MemTarget is a destination for one guest memory region: the region's byte
// at guest-physical address GPA+i is written to W at offset i.
type MemTarget struct {
	GPA  uint64
	Size uint64
	W    io.WriterAt
}

// Extents returns the verified extent table: the runs of non-zero pages the
// artifact stores, sorted by address, each inside one memory region.
func (a *Artifact) Extents() ([]Extent, error) {
	if a.m.Memory == nil {
		return nil, a.errf("%w", errNoMemory)
	}
	tb, err := a.readBlob(a.blobs[MemoryExtentsBlob]) // at most MaxExtents*extentSize bytes
	if err != nil {
		return nil, err
	}
	exts, err := parseExtents(tb, a.m.Memory.Regions, a.blobs[MemoryBlob].Size)
	if err != nil {
		return nil, a.errf("blob %q: %w", MemoryExtentsBlob, err)
	}
	return exts, nil
}

// parseExtents decodes an extent table and checks it against the memory
// regions and the size of the memory data blob.
func parseExtents(tb []byte, regions []Region, dataSize uint64) ([]Extent, error) {
	if len(tb)%extentSize != 0 {
		return nil, fmt.Errorf("%w: %d bytes, not a multiple of %d", ErrMalformed, len(tb), extentSize)
	}
	if n := len(tb) / extentSize; n > MaxExtents {
		return nil, fmt.Errorf("%w: %d extents, over %d", ErrLimit, n, MaxExtents)
	}
	exts := make([]Extent, len(tb)/extentSize)
	var prevEnd, total uint64
	ri := 0
	for i := range exts {
		e := Extent{
			GPA: binary.LittleEndian.Uint64(tb[i*extentSize:]),
			Len: binary.LittleEndian.Uint64(tb[i*extentSize+8:]),
		}
		if err := checkRegion(e.GPA, e.Len); err != nil {
			return nil, fmt.Errorf("%w: extent %d: %w", ErrMalformed, i, err)
		}
		if i > 0 && e.GPA < prevEnd {
			return nil, fmt.Errorf("%w: extent %d at GPA %#x: not after the previous extent's end %#x", ErrMalformed, i, e.GPA, prevEnd)
		}
		for ri < len(regions) && regions[ri].GPA+regions[ri].Size <= e.GPA {
			ri++
		}
		if ri == len(regions) || e.GPA < regions[ri].GPA || e.Len > regions[ri].GPA+regions[ri].Size-e.GPA {
			return nil, fmt.Errorf("%w: extent %d (GPA %#x, %d bytes) is not inside one memory region", ErrMalformed, i, e.GPA, e.Len)
		}
		prevEnd = e.GPA + e.Len
		total += e.Len // no overflow: extents are disjoint and inside the regions
		exts[i] = e
	}
	if total != dataSize {
		return nil, fmt.Errorf("%w: extents hold %d bytes, blob %q has %d", ErrMalformed, total, MemoryBlob, dataSize)
	}
	return exts, nil
}

// RestoreMemory writes the artifact's guest memory into regions, host
// mappings of guest memory that must match the artifact's regions (same
// addresses and sizes) and must be zero-filled: zero pages are not written.
//
// The memory is hashed as it is written and its digest checked at the end.
// If RestoreMemory returns an error, regions may hold unverified bytes and
// the guest MUST NOT be resumed.
func (a *Artifact) RestoreMemory(regions []MemRegion) error {
	dst := make([]memDest, len(regions))
	for i, r := range regions {
		dst[i] = memDest{gpa: r.GPA, size: uint64(len(r.Data)), buf: r.Data}
	}
	return a.restore(dst)
}

// RestoreMemoryTo is [Artifact.RestoreMemory] writing through io.WriterAt,
// such as a sparse file. The same rule holds: after an error, what was
// written is unverified and the guest MUST NOT be resumed.
func (a *Artifact) RestoreMemoryTo(targets []MemTarget) error {
	dst := make([]memDest, len(targets))
	for i, t := range targets {
		if t.W == nil {
			return a.errf("memory: target at GPA %#x has no writer", t.GPA)
		}
		dst[i] = memDest{gpa: t.GPA, size: t.Size, w: t.W}
	}
	return a.restore(dst)
}

type memDest struct {
	gpa, size uint64
	buf       []byte      // or
	w         io.WriterAt // nil if buf is used
}

const restoreChunk = 1 << 20

func (a *Artifact) restore(dst []memDest) error {
	if a.m.Memory == nil {
		return a.errf("%w", errNoMemory)
	}
	regions := a.m.Memory.Regions
	dst = slices.Clone(dst)
	slices.SortFunc(dst, func(x, y memDest) int { return cmp.Compare(x.gpa, y.gpa) })
	match := len(dst) == len(regions)
	for i := 0; match && i < len(dst); i++ {
		match = dst[i].gpa == regions[i].GPA && dst[i].size == regions[i].Size
	}
	if !match {
		return a.errf("memory: destination regions %s do not match the artifact's %s", formatDests(dst), formatRegions(regions))
	}

	exts, err := a.Extents() // verified before anything is written
	if err != nil {
		return err
	}
	mb := a.blobs[MemoryBlob]
	data := io.NewSectionReader(a.r, int64(mb.Offset), int64(mb.Size))
	h := sha256.New()
	var scratch []byte
	di := 0
	for _, e := range exts {
		for dst[di].gpa+dst[di].size <= e.GPA {
			di++ // parseExtents put every extent inside a region
		}
		d := dst[di]
		off := e.GPA - d.gpa
		for n := e.Len; n > 0; {
			c := min(n, restoreChunk)
			var p []byte
			if d.buf != nil {
				p = d.buf[off : off+c]
			} else {
				if scratch == nil {
					scratch = make([]byte, restoreChunk)
				}
				p = scratch[:c]
			}
			if _, err := io.ReadFull(data, p); err != nil {
				return a.errf("blob %q: read: %w", MemoryBlob, err)
			}
			h.Write(p)
			if d.w != nil {
				if _, err := d.w.WriteAt(p, int64(off)); err != nil {
					return a.errf("memory: write at GPA %#x: %w", d.gpa+off, err)
				}
			}
			off += c
			n -= c
		}
	}
	if sum := h.Sum(nil); Digest(sum) != mb.SHA256 {
		return fmt.Errorf("%w; guest memory now holds unverified bytes and must not be resumed", a.digestErr(mb, sum))
	}
	return nil
}

func formatRegions(rs []Region) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%#x+%#x", r.GPA, r.Size)
	}
	b.WriteByte(']')
	return b.String()
}

func formatDests(ds []memDest) string {
	rs := make([]Region, len(ds))
	for i, d := range ds {
		rs[i] = Region{d.gpa, d.size}
	}
	return formatRegions(rs)
}
