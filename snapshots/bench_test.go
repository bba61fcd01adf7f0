package snapshots

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

const benchMemSize = 512 << 20

// benchMemory returns 512 MiB of guest memory as a freshly booted small
// guest leaves it: 48 MiB of contiguous data (kernel, initramfs, page
// cache) and one page in 32 of the rest touched; about 60 MiB non-zero.
func benchMemory(b *testing.B) []MemRegion {
	m := mmapZero(b, benchMemSize)
	const dense = 48 << 20
	for p := 0; p < dense/PageSize; p++ {
		page(m, p, 1)
	}
	for p := dense / PageSize; p < benchMemSize/PageSize; p += 32 {
		page(m, p, 2)
	}
	return []MemRegion{{GPA: 0, Data: m}}
}

func writeBench(b *testing.B, path string, mem []MemRegion) {
	_, priv := testKey()
	w, err := Create(path, testMetadata())
	if err != nil {
		b.Fatal(err)
	}
	if err := w.AddMemory(mem); err != nil {
		b.Fatal(err)
	}
	if err := w.Commit(priv); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkWriteMemory writes 512 MiB of mostly-zero guest memory, fsync
// and rename included. Bytes/s are of guest memory, not of the file.
func BenchmarkWriteMemory(b *testing.B) {
	mem := benchMemory(b)
	path := filepath.Join(b.TempDir(), "bench.snap")
	b.SetBytes(benchMemSize)
	for b.Loop() {
		writeBench(b, path, mem)
	}
	b.StopTimer()
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fi.Size())/(1<<20), "file-MiB")
}

// BenchmarkRestoreMemory opens the artifact written by the same data and
// restores it into a fresh anonymous mapping (from the page cache).
func BenchmarkRestoreMemory(b *testing.B) {
	mem := benchMemory(b)
	path := filepath.Join(b.TempDir(), "bench.snap")
	writeBench(b, path, mem)
	pub, _ := testKey()
	b.SetBytes(benchMemSize)
	for b.Loop() {
		dst, err := unix.Mmap(-1, 0, benchMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			b.Fatal(err)
		}
		a, err := Open(path, pub)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.RestoreMemory([]MemRegion{{GPA: 0, Data: dst}}); err != nil {
			b.Fatal(err)
		}
		a.Close()
		unix.Munmap(dst)
	}
}
