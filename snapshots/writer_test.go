package snapshots

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dirNames lists dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestWriterFailures checks that each kind of failure is reported, sticks,
// and leaves nothing in the destination directory.
func TestWriterFailures(t *testing.T) {
	_, priv := testKey()
	unaligned := []MemRegion{{GPA: 0, Data: make([]byte, PageSize+1)}}
	for _, tc := range []struct {
		name string
		run  func(w *Writer) error
		msg  string
	}{
		{"abort", func(w *Writer) error { w.Abort(); return w.Commit(priv) }, "already committed or aborted"},
		{"blob name", func(w *Writer) error { return w.AddBlob("Vcpu/0", nil) }, `byte 'V' not allowed`},
		{"blob name empty segment", func(w *Writer) error { return w.AddBlob("vcpu//0", nil) }, "empty segment"},
		{"blob name dot", func(w *Writer) error { return w.AddBlob("vcpu/..", nil) }, "not allowed"},
		{"blob name too long", func(w *Writer) error { return w.AddBlob(strings.Repeat("a", MaxNameLen+1), nil) }, "over 128"},
		{"reserved name", func(w *Writer) error { return w.AddBlob("memory/extents", nil) }, "reserved for guest memory"},
		{"duplicate blob", func(w *Writer) error {
			w.AddBlob("vcpu/0", []byte("a"))
			return w.AddBlob("vcpu/0", []byte("b"))
		}, "added twice"},
		{"blob too large", func(w *Writer) error { return w.AddBlob("big", make([]byte, MaxBlobSize+1)) }, "limit exceeded"},
		{"too many blobs", func(w *Writer) error {
			for i := 0; ; i++ {
				if err := w.AddBlob("b/"+strings.Repeat("x", i%100)+string(rune('a'+i/100)), nil); err != nil {
					return err
				}
			}
		}, "more than 1024 blobs"},
		{"memory unaligned", func(w *Writer) error { return w.AddMemory(unaligned) }, "not aligned"},
		{"memory empty region", func(w *Writer) error { return w.AddMemory([]MemRegion{{GPA: 0}}) }, "empty"},
		{"memory no regions", func(w *Writer) error { return w.AddMemory(nil) }, "no regions"},
		{"memory overlap", func(w *Writer) error {
			return w.AddMemory([]MemRegion{{GPA: PageSize, Data: make([]byte, PageSize)}, {GPA: 0, Data: make([]byte, 2*PageSize)}})
		}, "overlaps"},
		{"memory twice", func(w *Writer) error {
			w.AddMemory(testMemory())
			return w.AddMemory(testMemory())
		}, "added twice"},
		{"bad key", func(w *Writer) error { return w.Commit(priv[:10]) }, "private key is 10 bytes"},
		{"error sticks", func(w *Writer) error {
			w.AddBlob("A", nil)
			if err := w.AddBlob("ok", nil); err == nil {
				return errors.New("AddBlob succeeded after an error")
			}
			return w.Commit(priv)
		}, `name "A"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "a.snap")
			w, err := Create(path, testMetadata())
			if err != nil {
				t.Fatal(err)
			}
			err = tc.run(w)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), "write artifact "+path+": ") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q, want it to name the artifact and contain %q", err, tc.msg)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("left behind: %q", names)
			}
			w.Abort() // harmless after a failure
		})
	}
}

func TestCreateInvalidMetadata(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*Metadata)
		msg  string
	}{
		{"no profile", func(m *Metadata) { m.Profile = "" }, "profile is empty"},
		{"vcpus", func(m *Metadata) { m.VCPUs = MaxVCPUs + 1 }, "vcpus 1025 out of range"},
		{"no time", func(m *Metadata) { m.Created = time.Time{} }, "created time is not set"},
		{"year", func(m *Metadata) { m.Created = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "year out of range"},
		{"invalid UTF-8", func(m *Metadata) { m.KernelRelease = "\xff" }, "not valid UTF-8"},
		{"control character", func(m *Metadata) { m.Recipe = "a\nb" }, "control character"},
		{"long text", func(m *Metadata) { m.BuilderVersion = strings.Repeat("x", MaxTextLen+1) }, "over 1024"},
		{"label key", func(m *Metadata) { m.Labels = map[string]string{"": "x"} }, "label key: empty name"},
		{"label value", func(m *Metadata) { m.Labels = map[string]string{"k": "\x00"} }, `label "k"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			md := testMetadata()
			tc.f(&md)
			_, err := Create(filepath.Join(dir, "a.snap"), md)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Create error %v, want one containing %q", err, tc.msg)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("left behind: %q", names)
			}
		})
	}
}

func TestCreateMissingDirectory(t *testing.T) {
	if _, err := Create(filepath.Join(t.TempDir(), "no", "a.snap"), testMetadata()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Create in a missing directory: %v", err)
	}
}

// TestCommitRenameFails makes the final rename fail (the destination is a
// non-empty directory) and checks that the temporary file is gone.
func TestCommitRenameFails(t *testing.T) {
	_, priv := testKey()
	dir := t.TempDir()
	path := filepath.Join(dir, "a.snap")
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := Create(path, testMetadata())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddMemory(testMemory()); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(priv); err == nil {
		t.Fatal("Commit over a directory succeeded")
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != "a.snap" {
		t.Errorf("directory holds %q, want only the original a.snap", names)
	}
}

func TestCommitReplacesAndCloses(t *testing.T) {
	pub, priv := testKey()
	dir := t.TempDir()
	path := filepath.Join(dir, "a.snap")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := Create(path, testMetadata())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(priv); err != nil {
		t.Fatal(err)
	}
	if err := w.AddBlob("late", nil); err == nil || !strings.Contains(err.Error(), "already committed") {
		t.Errorf("AddBlob after Commit: %v", err)
	}
	w.Abort() // must not remove the committed artifact
	if names := dirNames(t, dir); len(names) != 1 {
		t.Errorf("directory holds %q", names)
	}
	a, err := Open(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
}

// mmapZero returns an anonymous private mapping: zero-filled, and using no
// memory for pages that are only read.
func mmapZero(t testing.TB, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// TestSparseMemory writes a 256 MiB region with a few non-zero pages and
// checks that only those are stored and that they restore.
func TestSparseMemory(t *testing.T) {
	const size = 256 << 20
	pub, priv := testKey()
	src := mmapZero(t, size)
	touched := []int{0, 1, 2, 1000, size/PageSize - 1}
	for _, p := range touched {
		page(src, p, 9)
	}
	path := filepath.Join(t.TempDir(), "a.snap")
	w, err := Create(path, testMetadata())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddMemory([]MemRegion{{GPA: 1 << 20, Data: src}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(priv); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if max := int64(len(touched)*PageSize + 2*PageSize); fi.Size() > max {
		t.Errorf("artifact is %d bytes for %d non-zero pages, want at most %d", fi.Size(), len(touched), max)
	}
	a, err := Open(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	exts, err := a.Extents()
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{1 << 20, 3 * PageSize}, {1<<20 + 1000*PageSize, PageSize}, {1<<20 + size - PageSize, PageSize}}
	if len(exts) != len(want) || exts[0] != want[0] || exts[1] != want[1] || exts[2] != want[2] {
		t.Errorf("extents %#x, want %#x", exts, want)
	}
	dst := mmapZero(t, size)
	if err := a.RestoreMemory([]MemRegion{{GPA: 1 << 20, Data: dst}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst, src) {
		t.Error("restored memory differs")
	}
}
