package snapshots

import (
	"context"
	"path/filepath"
	"testing"
)

// benchMemory returns 512 MiB of guest memory as a freshly booted small
// guest leaves it: 48 MiB of contiguous data (kernel, initramfs, page
// cache) and one page in 4 of the rest touched.
func benchMemory(b *testing.B) []MemRegion {
	m := mmapZero(b, 512<<20)
	const dense = 48 << 20
	for p := 0; p < dense/PageSize; p++ {
		fillPage(m, p, 1)
	}
	for p := dense / PageSize; p < len(m)/PageSize; p += 4 {
		fillPage(m, p, 2)
	}
	return []MemRegion{{GPA: 0, Data: m}}
}

func BenchmarkWrite(b *testing.B) {
	mem := benchMemory(b)
	_, priv := testKey()
	dir := b.TempDir()
	b.SetBytes(512 << 20)
	for i := 0; b.Loop(); i++ {
		if _, err := Write(context.Background(), filepath.Join(dir, "a.snap"), testContents(b, mem), priv); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyRestore(b *testing.B) {
	mem := benchMemory(b)
	path := writeTest(b, testContents(b, mem))
	pub, _ := testKey()
	b.SetBytes(512 << 20)
	for b.Loop() {
		a, err := Open(path, pub)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Verify(); err != nil {
			b.Fatal(err)
		}
		dst := []MemRegion{{GPA: 0, Data: mmapZero(b, 512<<20)}}
		if err := a.RestoreMemory(dst, nil); err != nil {
			b.Fatal(err)
		}
		a.Close()
	}
}
