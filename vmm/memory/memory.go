package memory

import (
	"errors"
	"fmt"
	"os"

	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"

	"golang.org/x/sys/unix"
)

// Guest is guest RAM: anonymous host mappings, one per Region.
type Guest struct {
	size    uint64
	regions []Region
	maps    [][]byte
}

// ErrOutOfRange reports an access to guest-physical memory that is not RAM.
var ErrOutOfRange = errors.New("guest-physical range is not RAM")

// New maps size bytes of guest RAM laid out by Regions.
func New(size uint64) (*Guest, error) {
	if size < MinSize || size > MaxSize {
		return nil, fmt.Errorf("guest memory %d MiB out of range (%d MiB to %d GiB)", size>>20, MinSize>>20, MaxSize>>30)
	}
	if size%PageSize != 0 {
		return nil, fmt.Errorf("guest memory %d bytes is not a multiple of the page size", size)
	}
	g := &Guest{size: size, regions: Regions(size)}
	for _, r := range g.regions {
		b, err := unix.Mmap(-1, 0, int(r.Size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("map %d MiB of guest memory at %#x: %w", r.Size>>20, r.GPA, err)
		}
		// Guest RAM is large and never needs to be in a core dump.
		_ = unix.Madvise(b, unix.MADV_DONTDUMP)
		g.maps = append(g.maps, b)
	}
	return g, nil
}

// Size returns the amount of RAM in bytes.
func (g *Guest) Size() uint64 { return g.size }

// Regions returns the RAM regions and their host mappings.
func (g *Guest) Regions() ([]Region, [][]byte) { return g.regions, g.maps }

// Slice returns the host view of guest-physical [gpa, gpa+n). The range must
// lie within one region.
func (g *Guest) Slice(gpa, n uint64) ([]byte, error) {
	for i, r := range g.regions {
		if gpa >= r.GPA && gpa-r.GPA <= r.Size && n <= r.Size-(gpa-r.GPA) {
			off := gpa - r.GPA
			return g.maps[i][off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
}

// WriteAt copies b into guest memory at gpa.
func (g *Guest) WriteAt(b []byte, gpa uint64) error {
	s, err := g.Slice(gpa, uint64(len(b)))
	if err != nil {
		return err
	}
	copy(s, b)
	return nil
}

// ReadAt copies guest memory at gpa into b.
func (g *Guest) ReadAt(b []byte, gpa uint64) error {
	s, err := g.Slice(gpa, uint64(len(b)))
	if err != nil {
		return err
	}
	copy(b, s)
	return nil
}

// MapFile maps n bytes of f from offset off over guest-physical
// [gpa, gpa+n) copy-on-write: the guest reads f's bytes and its writes
// stay private. Guests mapping one file share the pages none of them has
// written. f may be closed afterwards.
func (g *Guest) MapFile(gpa, n uint64, f *os.File, off int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || off < 0 || uint64(st.Size()) < uint64(off) || uint64(st.Size())-uint64(off) < n {
		return fmt.Errorf("map %s at offset %d over guest memory at %#x: file of %d bytes, want a regular file with %d bytes there", f.Name(), off, gpa, st.Size(), n)
	}
	dst, err := g.Slice(gpa, n)
	if err != nil {
		return err
	}
	if err := kvm.MapFilePrivate(dst, int(f.Fd()), off); err != nil {
		return fmt.Errorf("%s at %#x: %w", f.Name(), gpa, err)
	}
	_ = unix.Madvise(dst, unix.MADV_DONTDUMP)
	return nil
}

// Close unmaps guest memory. No vCPU may run afterwards.
func (g *Guest) Close() error {
	var errs []error
	for _, b := range g.maps {
		errs = append(errs, unix.Munmap(b))
	}
	g.maps = nil
	return errors.Join(errs...)
}
