package snapshots

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"io"
	"runtime/metrics"
	"testing"
)

type discardAt struct{}

func (discardAt) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// exercise uses every reading method of a, which must not panic.
func exercise(t *testing.T, a *Artifact) {
	m := a.Manifest()
	for _, b := range m.Blobs {
		a.Blob(b.Name)
		if r, err := a.OpenBlob(b.Name); err == nil {
			io.Copy(io.Discard, r)
		}
	}
	a.VerifyBlobs()
	if m.Memory != nil {
		var targets []MemTarget
		for _, r := range m.Memory.Regions {
			targets = append(targets, MemTarget{GPA: r.GPA, Size: r.Size, W: discardAt{}})
		}
		if err := a.RestoreMemoryTo(targets); err != nil && a.VerifyBlobs() == nil {
			t.Errorf("RestoreMemoryTo failed on an artifact that verifies: %v", err)
		}
	}
}

// checkAllocs runs f and fails if it allocated more than max bytes. It
// reads runtime/metrics, which unlike runtime.ReadMemStats does not stop the
// world; small allocations may be counted late, which does not matter for
// the large ones this looks for.
func checkAllocs(t *testing.T, max uint64, f func()) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	f()
	metrics.Read(s)
	if n := s[0].Value.Uint64() - before; n > max {
		t.Fatalf("allocated %d bytes, want at most %d", n, max)
	}
}

// allocBound is what reading an input of n bytes may allocate: the two 1 MiB
// copy buffers, and a few times the input.
func allocBound(n int) uint64 { return 3<<20 + 8*uint64(n) }

// FuzzOpen feeds arbitrary bytes to the parser as an artifact signed with
// the test key.
func FuzzOpen(f *testing.F) {
	good := exampleBytes(f)
	f.Add(good)
	f.Add(good[:headerSize])
	f.Add([]byte{})
	f.Add(setU64(good, 32, 1<<62))
	pub, _ := testKey()
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAllocs(t, allocBound(len(data)), func() {
			a, err := NewReader(bytes.NewReader(data), int64(len(data)), pub)
			if err == nil {
				exercise(t, a)
			}
		})
	})
}

// signedFile builds an artifact from body (the bytes after the header) and a
// manifest, signing the manifest with the test key. It lets the fuzzer reach
// the code that only signed manifests reach.
func signedFile(priv ed25519.PrivateKey, body, manifest []byte) []byte {
	h := header{major: MajorVersion, minor: MinorVersion}
	h.manifestOff = headerSize + uint64(len(body))
	h.manifestSize = uint64(len(manifest))
	h.signatureOff = h.manifestOff + h.manifestSize
	h.signatureSize = signatureSize
	h.fileSize = h.signatureOff + signatureSize
	out := append(h.marshal(), body...)
	out = append(out, manifest...)
	return append(out, ed25519.Sign(priv, manifest)...)
}

// FuzzSignedManifest fuzzes the blob bytes and the manifest of an artifact
// whose signature verifies.
func FuzzSignedManifest(f *testing.F) {
	good := exampleBytes(f)
	h := fileHeader(f, good)
	f.Add(good[headerSize:h.manifestOff], good[h.manifestOff:h.manifestOff+h.manifestSize])
	f.Add([]byte{}, []byte(`{}`))
	pub, priv := testKey()
	f.Fuzz(func(t *testing.T, body, manifest []byte) {
		if len(manifest) > MaxManifestSize {
			return
		}
		data := signedFile(priv, body, manifest)
		checkAllocs(t, allocBound(len(data)), func() {
			a, err := NewReader(bytes.NewReader(data), int64(len(data)), pub)
			if err == nil {
				exercise(t, a)
			}
		})
	})
}

// FuzzExtents fuzzes the extent table, which a valid signature does not
// reach without a matching digest.
func FuzzExtents(f *testing.F) {
	regions := []Region{{0, 16 * PageSize}, {16 * PageSize, 4 * PageSize}, {1 << 32, 8 * PageSize}}
	var tb []byte
	for _, v := range []uint64{0, PageSize, 16 * PageSize, 4 * PageSize, 1<<32 + 7*PageSize, PageSize} {
		tb = binary.LittleEndian.AppendUint64(tb, v)
	}
	f.Add(tb, uint64(6*PageSize))
	f.Add([]byte{}, uint64(0))
	f.Fuzz(func(t *testing.T, tb []byte, dataSize uint64) {
		exts, err := parseExtents(tb, regions, dataSize)
		if err != nil {
			return
		}
		var total uint64
		for i, e := range exts {
			if i > 0 && e.GPA < exts[i-1].GPA+exts[i-1].Len {
				t.Fatalf("extent %d %#x overlaps or precedes extent %d %#x", i, e, i-1, exts[i-1])
			}
			inside := false
			for _, r := range regions {
				inside = inside || r.GPA <= e.GPA && e.GPA+e.Len <= r.GPA+r.Size && e.GPA+e.Len > e.GPA
			}
			if !inside || e.GPA%PageSize != 0 || e.Len%PageSize != 0 {
				t.Fatalf("accepted extent %#x", e)
			}
			total += e.Len
		}
		if total != dataSize {
			t.Fatalf("accepted extents of %d bytes for %d bytes of data", total, dataSize)
		}
	})
}

// TestDeclaredSizesDoNotAllocate checks that sizes an artifact declares do
// not turn into allocations beyond what the file holds.
func TestDeclaredSizesDoNotAllocate(t *testing.T) {
	good := exampleBytes(t)
	pub, _ := testKey()
	h := fileHeader(t, good)
	huge := mutated(t, good, func(m *Manifest) {
		m.Memory.Regions = []Region{{0, MaxMemorySize / 2}, {MaxMemorySize, MaxMemorySize / 2}}
	})
	for _, tc := range []struct {
		name string
		b    []byte
		max  uint64
	}{
		{"manifest size at limit", setU64(good, 32, MaxManifestSize), 64 << 10},
		{"manifest at end of file", setU64(setU64(good, 24, h.fileSize-MaxManifestSize/2), 32, MaxManifestSize), 64 << 10},
		{"1 TiB of memory", huge, restoreChunk + 256<<10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkAllocs(t, tc.max, func() {
				a, err := NewReader(bytes.NewReader(tc.b), int64(len(tc.b)), pub)
				if err != nil {
					return
				}
				m := a.Manifest()
				if got := m.MemorySize(); got != MaxMemorySize {
					t.Fatalf("memory size %d", got)
				}
				targets := []MemTarget{{0, MaxMemorySize / 2, discardAt{}}, {MaxMemorySize, MaxMemorySize / 2, discardAt{}}}
				if err := a.RestoreMemoryTo(targets); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}
