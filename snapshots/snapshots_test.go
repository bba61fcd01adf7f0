package snapshots

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/example.snap and example.pub")

// testKey is a fixed key, so that the example artifact is reproducible.
func testKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x5e}, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

func testMetadata() Metadata {
	return Metadata{
		Profile:        "minimal",
		VCPUs:          2,
		KernelRelease:  "6.12.38+deb12-amd64",
		Recipe:         "debian-initramfs",
		BuilderVersion: "test",
		Created:        time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		Labels:         map[string]string{"arch": "x86_64", "note": "example <&> \u00e9"},
	}
}

// testBlobs are the small blobs of the example, in the order they are added.
var testBlobs = []struct {
	name string
	data []byte
}{
	{"vcpu/0", bytes.Repeat([]byte("regs0"), 300)},
	{"vcpu/1", bytes.Repeat([]byte("regs1"), 300)},
	{"vm/irqchip", []byte("ioapic state")},
	{"vm/clock", []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	{"devices/serial0", []byte("16550A")},
	{"devices/empty", nil},
}

// page fills page i of b with a pattern that depends on i and seed.
func page(b []byte, i int, seed byte) {
	for j := range PageSize {
		b[i*PageSize+j] = byte(i*7+j) ^ seed | 1
	}
}

// testMemory is two small regions with a few non-zero pages, one of them at
// a region's end and one region above 4 GiB.
func testMemory() []MemRegion {
	lo := make([]byte, 16*PageSize)
	page(lo, 0, 1)
	page(lo, 1, 2)
	page(lo, 5, 3)
	lo[9*PageSize+PageSize-1] = 0xff // one non-zero byte makes page 9 stored
	hi := make([]byte, 8*PageSize)
	page(hi, 7, 4)
	return []MemRegion{{GPA: 1 << 32, Data: hi}, {GPA: 0, Data: lo}}
}

// writeExample writes the example artifact to path.
func writeExample(t testing.TB, path string) {
	t.Helper()
	_, priv := testKey()
	w, err := Create(path, testMetadata())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range testBlobs[:2] {
		if err := w.AddBlob(b.name, b.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.AddMemory(testMemory()); err != nil {
		t.Fatal(err)
	}
	for _, b := range testBlobs[2:] {
		if err := w.AddBlob(b.name, b.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(priv); err != nil {
		t.Fatal(err)
	}
}

// exampleBytes returns a freshly written example artifact.
func exampleBytes(t testing.TB) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "example.snap")
	writeExample(t, path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkExample checks that a holds exactly the example's contents.
func checkExample(t *testing.T, a *Artifact) {
	t.Helper()
	m := a.Manifest()
	if !reflect.DeepEqual(m.Metadata, testMetadata()) {
		t.Errorf("metadata = %+v, want %+v", m.Metadata, testMetadata())
	}
	if m.Format != FormatName || m.Version != (Version{MajorVersion, MinorVersion}) {
		t.Errorf("format %q version %v", m.Format, m.Version)
	}
	if got, want := m.MemorySize(), uint64(24*PageSize); got != want {
		t.Errorf("MemorySize = %d, want %d", got, want)
	}
	for _, b := range testBlobs {
		got, err := a.Blob(b.name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, b.data) {
			t.Errorf("blob %q = %q, want %q", b.name, got, b.data)
		}
		r, err := a.OpenBlob(b.name)
		if err != nil {
			t.Fatal(err)
		}
		streamed, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("OpenBlob(%q): %v", b.name, err)
		}
		if !bytes.Equal(streamed, b.data) {
			t.Errorf("OpenBlob(%q) read %q, want %q", b.name, streamed, b.data)
		}
	}
	if _, err := a.Blob("vcpu/2"); err == nil {
		t.Error("Blob of a missing name succeeded")
	}
	exts, err := a.Extents()
	if err != nil {
		t.Fatal(err)
	}
	wantExts := []Extent{{0, 2 * PageSize}, {5 * PageSize, PageSize}, {9 * PageSize, PageSize}, {1<<32 + 7*PageSize, PageSize}}
	if !reflect.DeepEqual(exts, wantExts) {
		t.Errorf("Extents = %#x, want %#x", exts, wantExts)
	}
	want := testMemory()
	got := []MemRegion{{GPA: 0, Data: make([]byte, len(want[1].Data))}, {GPA: 1 << 32, Data: make([]byte, len(want[0].Data))}}
	if err := a.RestoreMemory(got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[0].Data, want[1].Data) || !bytes.Equal(got[1].Data, want[0].Data) {
		t.Error("restored memory differs from what was written")
	}
	if err := a.VerifyBlobs(); err != nil {
		t.Error(err)
	}
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.snap")
	writeExample(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("artifact mode %#o, want 0600", perm)
	}
	pub, _ := testKey()
	a, err := Open(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	checkExample(t, a)

	// Manifest returns a copy.
	m := a.Manifest()
	m.Labels["arch"] = "changed"
	m.Blobs[0].Name = "changed"
	m.Memory.Regions[0].Size = 1
	if a.Manifest().Labels["arch"] != "x86_64" || a.Manifest().Blobs[0].Name == "changed" || a.Manifest().Memory.Regions[0].Size == 1 {
		t.Error("changing Manifest's result changed the artifact")
	}
}

func TestNoMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.snap")
	pub, priv := testKey()
	w, err := Create(path, testMetadata())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddBlob("vcpu/0", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(priv); err != nil {
		t.Fatal(err)
	}
	a, err := Open(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Manifest().Memory != nil {
		t.Error("manifest has memory")
	}
	if err := a.RestoreMemory(nil); !errors.Is(err, errNoMemory) {
		t.Errorf("RestoreMemory = %v, want %v", err, errNoMemory)
	}
	if err := a.VerifyBlobs(); err != nil {
		t.Error(err)
	}
}

// TestExample checks that the writer still produces testdata/example.snap
// byte for byte, and that the committed file still reads: a change to either
// is a format change. go test -run TestExample -update rewrites them.
func TestExample(t *testing.T) {
	got := exampleBytes(t)
	pub, _ := testKey()
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("testdata/example.snap", got, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("testdata/example.pub", pubPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/example.snap")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("writer output (%d bytes) differs from testdata/example.snap (%d bytes); if the format changed on purpose, bump the version and run with -update", len(got), len(want))
	}
	filePub, err := LoadPublicKey("testdata/example.pub")
	if err != nil {
		t.Fatal(err)
	}
	if !filePub.Equal(pub) {
		t.Fatal("testdata/example.pub is not the test key")
	}
	a, err := Open("testdata/example.snap", filePub)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	checkExample(t, a)
}

func TestRestoreMemoryTo(t *testing.T) {
	pub, _ := testKey()
	b := exampleBytes(t)
	a, err := NewReader(bytes.NewReader(b), int64(len(b)), pub)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var targets []MemTarget
	for _, r := range a.Manifest().Memory.Regions {
		f, err := os.Create(filepath.Join(dir, "mem"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(int64(r.Size)); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, MemTarget{GPA: r.GPA, Size: r.Size, W: f})
		dir = t.TempDir()
	}
	if err := a.RestoreMemoryTo(targets); err != nil {
		t.Fatal(err)
	}
	want := testMemory()
	for i, w := range []MemRegion{want[1], want[0]} {
		got, err := os.ReadFile(targets[i].W.(*os.File).Name())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, w.Data) {
			t.Errorf("region %#x: file differs from the memory written", w.GPA)
		}
	}
}

func TestRestoreMemoryRegionMismatch(t *testing.T) {
	pub, _ := testKey()
	b := exampleBytes(t)
	a, err := NewReader(bytes.NewReader(b), int64(len(b)), pub)
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := make([]byte, 16*PageSize), make([]byte, 8*PageSize)
	for _, tc := range []struct {
		name    string
		regions []MemRegion
	}{
		{"none", nil},
		{"one missing", []MemRegion{{0, lo}}},
		{"extra", []MemRegion{{0, lo}, {1 << 32, hi}, {1 << 40, hi}}},
		{"smaller", []MemRegion{{0, lo[:PageSize]}, {1 << 32, hi}}},
		{"larger", []MemRegion{{0, lo}, {1 << 32, make([]byte, 9*PageSize)}}},
		{"moved", []MemRegion{{PageSize, lo}, {1 << 32, hi}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := a.RestoreMemory(tc.regions)
			if err == nil {
				t.Fatal("RestoreMemory succeeded")
			}
			if !bytes.Contains([]byte(err.Error()), []byte("do not match the artifact's [0x0+0x10000 0x100000000+0x8000]")) {
				t.Errorf("error %q does not describe the layouts", err)
			}
			for _, r := range tc.regions {
				if !bytes.Equal(r.Data, make([]byte, len(r.Data))) {
					t.Error("memory written despite the mismatch")
				}
			}
		})
	}
}
