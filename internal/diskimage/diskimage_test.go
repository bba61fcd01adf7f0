package diskimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

func TestNewFAT32(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.img")
	if err := NewFAT32(path, 64<<20, "DATA"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != 64<<20 {
		t.Fatalf("image: %v, %v", st, err)
	}
	d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	tbl, ok := pt.(*mbr.Table)
	if !ok {
		t.Fatalf("partition table %T", pt)
	}
	var used []*mbr.Partition
	for _, p := range tbl.Partitions {
		if p.Type != mbr.Empty {
			used = append(used, p)
		}
	}
	if len(used) != 1 {
		t.Fatalf("%d partitions, want 1", len(used))
	}
	p := used[0]
	if p.Type != mbr.Fat32LBA || p.Start != firstSector || uint64(p.Start+p.Size)*sectorSize != 64<<20 {
		t.Errorf("partition %+v", p)
	}
	if _, err := d.GetFilesystem(1); err != nil {
		t.Errorf("FAT32 filesystem: %v", err)
	}
	// dosfstools' checker agrees, where it is installed.
	if fsck, err := exec.LookPath("fsck.fat"); err == nil {
		part := filepath.Join(t.TempDir(), "part.img")
		if err := ExtractPartition(part, path, 1); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(fsck, "-n", part).CombinedOutput()
		if err != nil {
			t.Errorf("fsck.fat: %v\n%s", err, out)
		}
	}
	if err := NewFAT32(path, 64<<20, "DATA"); err == nil {
		t.Error("an existing image was replaced")
	}
	for _, size := range []uint64{8 << 20, 64<<20 + 100} {
		if err := NewFAT32(filepath.Join(t.TempDir(), "x.img"), size, "X"); err == nil {
			t.Errorf("a disk of %d bytes was made", size)
		}
	}
}

func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	img := make([]byte, 1<<20)
	copy(img[8192:], "boot sector of sorts")
	if err := os.WriteFile(src, img, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.img")
	if err := Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || string(got) != string(img) {
		t.Fatalf("copy differs (%v)", err)
	}
	if err := Copy(dst, src); err == nil {
		t.Error("Copy replaced an existing file")
	}
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o600)
	if err := Copy(filepath.Join(dir, "o2.img"), odd); err == nil {
		t.Error("an image of 1000 bytes was copied")
	}
	if err := Copy(filepath.Join(dir, "d.img"), dir); err == nil {
		t.Error("a directory was copied")
	}
	if _, err := os.Stat(filepath.Join(dir, "o2.img")); err == nil {
		t.Error("a failed copy left its file")
	}
}
