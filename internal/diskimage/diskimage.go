// Package diskimage makes the disk images recipes ask for, with
// go-diskfs: a new disk with an MBR partition table and one FAT32
// partition, which every PC OS can read; the same made bootable through
// a PC BIOS with syslinux (NewSyslinux); and copies of images the user
// gives. Images are written under a temporary name and renamed into
// place, so a failed or killed build leaves no half-made disk.
package diskimage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/bunkerbuild/bunkerbuild/snapshots"
)

const (
	sectorSize = 512
	// firstSector aligns the partition to 1 MiB, as fdisk does.
	firstSector = 2048
	// MinFAT32 is the smallest disk that holds a FAT32 partition: FAT32
	// needs at least 65,525 clusters.
	MinFAT32 = 40 << 20
)

// NewFAT32 makes a disk of size bytes at path: an MBR with one FAT32
// (LBA) partition from 1 MiB to the end, formatted with label. path must
// not exist. The image is sparse: only the metadata is written.
func NewFAT32(path string, size uint64, label string) error {
	if err := checkSize(path, size); err != nil {
		return err
	}
	return create(path, func(tmp string) error {
		d, err := diskfs.Create(tmp, int64(size), diskfs.SectorSize512)
		if err != nil {
			return err
		}
		defer d.Close()
		return format(d, size, label, false)
	})
}

// checkSize checks the size of a new FAT32 disk.
func checkSize(path string, size uint64) error {
	if size < MinFAT32 || size%sectorSize != 0 || size/sectorSize > 1<<32 {
		return fmt.Errorf("new FAT32 disk %s: size %d must be a multiple of %d from %d to 2 TiB", path, size, sectorSize, MinFAT32)
	}
	return nil
}

// format writes d's MBR, with one FAT32 (LBA) partition from firstSector
// to the end (active if bootable), and formats the partition.
func format(d *disk.Disk, size uint64, label string, bootable bool) error {
	table := &mbr.Table{LogicalSectorSize: sectorSize, PhysicalSectorSize: sectorSize,
		Partitions: []*mbr.Partition{{Index: 1, Bootable: bootable, Type: mbr.Fat32LBA, Start: firstSector, Size: uint32(size/sectorSize - firstSector)}}}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	if _, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: label}); err != nil {
		return fmt.Errorf("FAT32: %w", err)
	}
	return nil
}

// Copy copies the raw image src to a new file at path, sparse where src
// is zero. src must be a regular file whose size is a whole number of
// sectors.
func Copy(path, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Size() == 0 || st.Size()%sectorSize != 0 {
		return fmt.Errorf("disk image %s: want a regular file of a positive multiple of %d bytes, it is %d bytes (%v)", src, sectorSize, st.Size(), st.Mode().Type())
	}
	return create(path, func(tmp string) error {
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := snapshots.CopySparse(f, io.NewSectionReader(in, 0, st.Size()), nil); err != nil {
			return err
		}
		return f.Sync()
	})
}

// create runs build on a temporary name next to path and renames the
// result to path, which must not exist.
func create(path string, build func(tmp string) error) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("disk image %s exists", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+fmt.Sprintf(".partial-%d", os.Getpid()))
	os.Remove(tmp)
	if err := build(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("disk image %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// ExtractPartition copies partition n (from 1) of the MBR disk image src
// to a new file at path, for tools that check a filesystem image.
func ExtractPartition(path, src string, n int) error {
	d, err := diskfs.Open(src, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := d.GetPartitionTable(); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	p, err := d.GetPartition(n)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return create(path, func(tmp string) error {
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		return snapshots.CopySparse(f, io.NewSectionReader(in, p.GetStart(), p.GetSize()), nil)
	})
}
