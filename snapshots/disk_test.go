package snapshots

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// testDisk makes a 1 MiB image that is zero but for two pages.
func testDisk(t *testing.T) (*os.File, []byte) {
	img := make([]byte, 1<<20)
	copy(img[4096:], "first data page")
	copy(img[700*1024:], "another")
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, img
}

func TestDiskRoundTrip(t *testing.T) {
	f, img := testDisk(t)
	c := testContents(t, testMemory(t))
	c.Disks = []DiskImage{{Disk: Disk{ID: "data", Size: uint64(len(img))}, File: f}}
	path := writeTest(t, c)
	a := openVerified(t, path)
	if d := a.Disks(); len(d) != 1 || d[0].ID != "data" || d[0].Size != 1<<20 {
		t.Fatalf("disks %+v", d)
	}
	out := filepath.Join(t.TempDir(), "resumed.img")
	if err := a.CopyDisk(0, out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Error("the copied disk differs from the captured one")
	}
	if err := a.CopyDisk(0, out); err == nil {
		t.Error("CopyDisk replaced an existing file")
	}
	if err := a.CopyDisk(1, filepath.Join(t.TempDir(), "x")); err == nil {
		t.Error("CopyDisk copied a disk the artifact does not have")
	}
	ro, err := a.OpenDisk(0)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	b := make([]byte, 15)
	if _, err := ro.ReadAt(b, 4096); err != nil || string(b) != "first data page" {
		t.Errorf("read-only disk reads %q, %v", b, err)
	}
	// The blob and the copy are sparse where the image is zero.
	l, _ := a.diskLayer(0)
	for _, p := range []string{filepath.Join(path, "blobs", "sha256", l.Digest.Encoded()), out} {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 >= 1<<20 {
			t.Errorf("%s takes %d bytes on disk for 2 data pages", p, st.Blocks*512)
		}
	}
}

func TestDiskTampered(t *testing.T) {
	f, img := testDisk(t)
	c := testContents(t, testMemory(t))
	c.Disks = []DiskImage{{Disk: Disk{ID: "data", Size: uint64(len(img))}, File: f}}
	path := writeTest(t, c)
	pub, _ := testKey()
	a, err := Open(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	l, _ := a.diskLayer(0)
	blob := filepath.Join(path, "blobs", "sha256", l.Digest.Encoded())
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[4096] ^= 1
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(); err == nil {
		t.Error("a tampered disk verified")
	}
	if err := a.CopyDisk(0, filepath.Join(t.TempDir(), "x")); err == nil {
		t.Error("an unverified disk was copied")
	}
}

func TestDiskRefused(t *testing.T) {
	f, img := testDisk(t)
	for _, tc := range []struct {
		name string
		d    Disk
	}{
		{"size differs from the image", Disk{ID: "d", Size: uint64(len(img)) - 512}},
		{"size not a multiple of 512", Disk{ID: "d", Size: 1000}},
		{"id too long", Disk{ID: "a-disk-id-over-twenty-bytes", Size: uint64(len(img))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testContents(t, testMemory(t))
			c.Disks = []DiskImage{{Disk: tc.d, File: f}}
			_, priv := testKey()
			if _, err := Write(t.Context(), filepath.Join(t.TempDir(), "a.snap"), c, priv); err == nil {
				t.Error("written")
			}
		})
	}
}
