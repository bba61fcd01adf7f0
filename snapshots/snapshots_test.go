package snapshots

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// testKey is a fixed key pair, so that failures reproduce.
func testKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

func testConfig() Config {
	return Config{
		Created:       time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
		BootProfile:   "full",
		ResumeProfile: "minimal",
		VCPUs:         2,
		CPUID:         []CPUIDEntry{{Function: 0, EAX: 0xd, EBX: 0x68747541}},
		Kernel:        &Source{Name: "vmlinuz", Release: "6.12.95", Digest: digest.FromString("kernel")},
		Labels:        map[string]string{"recipe": "default"},
	}
}

// testMemory returns guest memory of two regions laid out so that every
// encoding appears: in region 0 a dense chunk (raw), a chunk with every
// fourth page set (sparse), a zero chunk (not stored) and a short last
// chunk with one page; region 1 is one dense short chunk.
func testMemory(t testing.TB) []MemRegion {
	r0 := mmapZero(t, 3*ChunkSize+8*PageSize)
	for p := 0; p < ChunkSize/PageSize; p++ {
		fillPage(r0, p, byte(p))
	}
	for p := ChunkSize / PageSize; p < 2*ChunkSize/PageSize; p += 4 {
		fillPage(r0, p, 0xa5)
	}
	fillPage(r0, 3*ChunkSize/PageSize+5, 0x5a)
	r1 := mmapZero(t, 16*PageSize)
	for p := 0; p < 16; p++ {
		fillPage(r1, p, 0xee)
	}
	return []MemRegion{{GPA: 0, Data: r0}, {GPA: 1 << 32, Data: r1}}
}

func mmapZero(t testing.TB, n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func fillPage(m []byte, p int, v byte) {
	pg := m[p*PageSize : (p+1)*PageSize]
	for i := range pg {
		pg[i] = v + byte(i)
	}
}

func testContents(t testing.TB, mem []MemRegion) Contents {
	if mem == nil {
		mem = []MemRegion{{GPA: 0, Data: mmapZero(t, 4*PageSize)}}
		fillPage(mem[0].Data, 1, 1)
	}
	return Contents{Config: testConfig(), VCPUState: []byte(`{"vcpus":[]}`), DeviceState: []byte(`{"ioapic":{}}`), Memory: mem}
}

func writeTest(t testing.TB, c Contents) string {
	t.Helper()
	_, priv := testKey()
	path := filepath.Join(t.TempDir(), "guest.snap")
	if _, err := Write(context.Background(), path, c, priv); err != nil {
		t.Fatal(err)
	}
	return path
}

func openVerified(t *testing.T, path string) *Artifact {
	t.Helper()
	pub, _ := testKey()
	a, err := Open(path, pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Verify(); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRoundTrip(t *testing.T) {
	mem := testMemory(t)
	c := testContents(t, mem)
	_, priv := testKey()
	path := filepath.Join(t.TempDir(), "guest.snap")
	sum, err := Write(t.Context(), path, c, priv)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Chunks != 4 || sum.RawChunks != 2 {
		t.Errorf("wrote %d chunks, %d raw; want 4 and 2", sum.Chunks, sum.RawChunks)
	}
	if want := uint64(ChunkSize/PageSize + ChunkSize/PageSize/4 + 1 + 16); sum.StoredPages != want {
		t.Errorf("stored %d pages, want %d", sum.StoredPages, want)
	}
	a := openVerified(t, path)
	if a.Digest() != sum.Manifest {
		t.Errorf("manifest digest %s, Write said %s", a.Digest(), sum.Manifest)
	}
	cfg := a.Config()
	if cfg.VCPUs != 2 || cfg.Kernel.Release != "6.12.95" || cfg.Labels["recipe"] != "default" || !cfg.Created.Equal(testConfig().Created) {
		t.Errorf("config read back as %+v", cfg)
	}
	if got := cfg.Memory.Size(); got != uint64(len(mem[0].Data)+len(mem[1].Data)) {
		t.Errorf("memory size %d", got)
	}
	for name, f := range map[string]func() ([]byte, error){"vcpu": a.VCPUState, "device": a.DeviceState} {
		b, err := f()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string][]byte{"vcpu": c.VCPUState, "device": c.DeviceState}[name]; !bytes.Equal(b, want) {
			t.Errorf("%s state %q, want %q", name, b, want)
		}
	}
	for _, mapped := range []bool{false, true} {
		dst := []MemRegion{{GPA: 0, Data: mmapZero(t, len(mem[0].Data))}, {GPA: 1 << 32, Data: mmapZero(t, len(mem[1].Data))}}
		var mapper Mapper
		maps := 0
		if mapped {
			mapper = func(gpa, size uint64, f *os.File, off int64) error {
				maps++
				var d []byte
				if gpa >= 1<<32 {
					d = dst[1].Data[gpa-1<<32 : gpa-1<<32+size]
				} else {
					d = dst[0].Data[gpa : gpa+size]
				}
				b, err := unix.Mmap(int(f.Fd()), off, int(size), unix.PROT_READ, unix.MAP_PRIVATE)
				if err != nil {
					return err
				}
				copy(d, b)
				return unix.Munmap(b)
			}
		}
		if err := a.RestoreMemory(dst, mapper); err != nil {
			t.Fatal(err)
		}
		for i := range mem {
			if !bytes.Equal(dst[i].Data, mem[i].Data) {
				t.Errorf("mapped=%v: region %d differs after restore", mapped, i)
			}
		}
		// Two raw chunks, 1024 runs of one page in the sparse chunk, one
		// run in the short chunk.
		if want := 2 + ChunkSize/PageSize/4 + 1; mapped && maps != want {
			t.Errorf("mapper called %d times, want %d", maps, want)
		}
	}
}

// TestOCILayout checks the directory against the OCI image layout: the
// files, the index naming the manifest by tag and the signature as a
// referrer of it.
func TestOCILayout(t *testing.T) {
	path := writeTest(t, testContents(t, nil))
	var lay ocispec.ImageLayout
	readJSON(t, filepath.Join(path, ocispec.ImageLayoutFile), &lay)
	if lay.Version != ocispec.ImageLayoutVersion {
		t.Errorf("layout version %q", lay.Version)
	}
	var idx ocispec.Index
	readJSON(t, filepath.Join(path, ocispec.ImageIndexFile), &idx)
	if len(idx.Manifests) != 2 || idx.Manifests[0].Annotations[ocispec.AnnotationRefName] != DefaultTag {
		t.Fatalf("index %+v", idx)
	}
	var sig ocispec.Manifest
	readJSON(t, filepath.Join(path, "blobs/sha256", idx.Manifests[1].Digest.Encoded()), &sig)
	if sig.Subject == nil || sig.Subject.Digest != idx.Manifests[0].Digest || sig.ArtifactType != SignatureArtifactType {
		t.Errorf("signature manifest %+v does not refer to the snapshot manifest", sig)
	}
	// Every blob file is named by its digest, and only blobs are there.
	ents, err := os.ReadDir(filepath.Join(path, "blobs/sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(path, "blobs/sha256", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if d := digest.FromBytes(b); d.Encoded() != e.Name() {
			t.Errorf("blob %s hashes to %s", e.Name(), d)
		}
	}
	top, _ := os.ReadDir(path)
	if len(top) != 3 {
		t.Errorf("layout holds %d entries, want blobs, index.json and oci-layout", len(top))
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func TestWriteReplacesAtomically(t *testing.T) {
	_, priv := testKey()
	dir := t.TempDir()
	path := filepath.Join(dir, "guest.snap")
	first, err := Write(t.Context(), path, testContents(t, nil), priv)
	if err != nil {
		t.Fatal(err)
	}
	c := testContents(t, nil)
	c.Config.VCPUs = 1
	second, err := Write(t.Context(), path, c, priv)
	if err != nil {
		t.Fatal(err)
	}
	if first.Manifest == second.Manifest {
		t.Fatal("the second artifact has the first's digest")
	}
	if a := openVerified(t, path); a.Digest() != second.Manifest {
		t.Errorf("after replacing, %s holds %s", path, a.Digest())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries after replacing, want 1", len(ents))
	}

	// Not over something that is not an artifact.
	other := filepath.Join(dir, "notes")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(t.Context(), other, testContents(t, nil), priv); err == nil || !strings.Contains(err.Error(), "not an OCI layout") {
		t.Errorf("Write over a plain directory: %v", err)
	}

	// A cancelled write leaves nothing, and no partial directory.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	fresh := filepath.Join(dir, "cancelled.snap")
	if _, err := Write(ctx, fresh, testContents(t, testMemory(t)), priv); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Write: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("cancelled write left %d entries, want 2", len(ents))
	}

	// A partial directory of a dead writer is removed by the next write.
	stale := filepath.Join(dir, partialPrefix(path)+"999999999-00")
	if err := os.Mkdir(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(t.Context(), path, testContents(t, nil), priv); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale partial directory survived: %v", err)
	}
}

func TestVerifyCached(t *testing.T) {
	pub, _ := testKey()
	path := writeTest(t, testContents(t, testMemory(t)))
	verify := func() (bool, error) {
		a, err := Open(path, pub)
		if err != nil {
			return false, err
		}
		defer a.Close()
		return a.VerifyCached()
	}
	for i, want := range []bool{true, false, false} {
		hashed, err := verify()
		if err != nil || hashed != want {
			t.Fatalf("verification %d: hashed %v, %v; want hashed %v", i+1, hashed, err, want)
		}
	}
	// A changed layer: its change time moves, so it is hashed, and refused.
	l := layers(t, path)[3]
	f := filepath.Join(path, "blobs/sha256", l.Digest.Encoded())
	b, _ := os.ReadFile(f)
	b[100] ^= 1
	os.WriteFile(f, b, 0o644)
	if hashed, err := verify(); !hashed || !errors.Is(err, ErrDigest) {
		t.Errorf("after a change: hashed %v, %v", hashed, err)
	}
	b[100] ^= 1
	os.WriteFile(f, b, 0o644)
	if hashed, err := verify(); !hashed || err != nil {
		t.Errorf("after undoing the change: hashed %v, %v; want a full verification", hashed, err)
	}
	// A directory others can write: never trusted from a stamp.
	os.Chmod(filepath.Join(path, "blobs/sha256"), 0o777)
	if hashed, err := verify(); !hashed || err != nil {
		t.Errorf("with a world-writable blob directory: hashed %v, %v", hashed, err)
	}
	// A forged stamp for another manifest is ignored.
	os.Chmod(filepath.Join(path, "blobs/sha256"), 0o755)
	os.WriteFile(filepath.Join(path, StampFile), []byte(`{"manifest":"sha256:`+strings.Repeat("0", 64)+`","layers":[]}`), 0o644)
	if hashed, err := verify(); !hashed || err != nil {
		t.Errorf("with a stamp for another manifest: hashed %v, %v", hashed, err)
	}
}
