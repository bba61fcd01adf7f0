package snapshots

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fileHeader returns b's header, which must be valid.
func fileHeader(t testing.TB, b []byte) header {
	t.Helper()
	h, err := parseHeader(b[:headerSize])
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// fileManifest returns b's manifest, which must be valid.
func fileManifest(t testing.TB, b []byte) *Manifest {
	t.Helper()
	h := fileHeader(t, b)
	m, err := decodeManifest(b[h.manifestOff : h.manifestOff+h.manifestSize])
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// withManifest returns b with its manifest replaced by mb, signed with the
// test key, and the header adjusted: a valid signature over whatever mb is.
func withManifest(t testing.TB, b, mb []byte) []byte {
	t.Helper()
	_, priv := testKey()
	h := fileHeader(t, b)
	out := append(bytes.Clone(b[:h.manifestOff]), mb...)
	h.manifestSize = uint64(len(mb))
	h.signatureOff = uint64(len(out))
	out = append(out, ed25519.Sign(priv, mb)...)
	h.fileSize = uint64(len(out))
	copy(out, h.marshal())
	return out
}

// mutated returns b with its manifest changed by f and re-signed.
func mutated(t testing.TB, b []byte, f func(*Manifest)) []byte {
	t.Helper()
	m := fileManifest(t, b)
	f(m)
	mb, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return withManifest(t, b, mb)
}

func blobInfo(t testing.TB, b []byte, name string) BlobInfo {
	t.Helper()
	for _, bi := range fileManifest(t, b).Blobs {
		if bi.Name == name {
			return bi
		}
	}
	t.Fatalf("no blob %q", name)
	return BlobInfo{}
}

func flip(b []byte, off uint64) []byte {
	b = bytes.Clone(b)
	b[off] ^= 0x80
	return b
}

func setU64(b []byte, off int, v uint64) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint64(b[off:], v)
	return b
}

func setU16(b []byte, off int, v uint16) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint16(b[off:], v)
	return b
}

// openBytes writes b to a file and opens it, so that errors name the file.
func openBytes(t *testing.T, b []byte, pub ed25519.PublicKey) (*Artifact, string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "t.snap")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Open(path, pub)
	if a != nil {
		t.Cleanup(func() { a.Close() })
	}
	return a, path, err
}

// wantErr checks that err wraps target and its message contains want.
func wantErr(t *testing.T, err, target error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", target)
	}
	if !errors.Is(err, target) {
		t.Errorf("error %q does not wrap %q", err, target)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
}

// TestOpenRejects covers changes that Open must detect, with the error it
// must give.
func TestOpenRejects(t *testing.T) {
	good := exampleBytes(t)
	h := fileHeader(t, good)
	pub, _ := testKey()
	otherPub, _, _ := ed25519.GenerateKey(nil)
	mb := good[h.manifestOff : h.manifestOff+h.manifestSize]
	vcpu0 := blobInfo(t, good, "vcpu/0")
	manyBlobs := make([]BlobInfo, MaxBlobs+1)
	for i := range manyBlobs {
		manyBlobs[i] = BlobInfo{Name: fmt.Sprintf("b/%04d", i), Offset: headerSize}
	}
	manyRegions := make([]Region, MaxRegions+1)
	for i := range manyRegions {
		manyRegions[i] = Region{GPA: uint64(i) << 20, Size: PageSize}
	}

	for _, tc := range []struct {
		name   string
		b      []byte
		pub    ed25519.PublicKey
		target error
		msg    string
	}{
		// Unsigned parts: header and signature.
		{"empty file", nil, pub, ErrTruncated, "file is 0 bytes, shorter than the 64-byte header"},
		{"truncated in header", good[:63], pub, ErrTruncated, "shorter than the 64-byte header"},
		{"header only", good[:64], pub, ErrTruncated, "file is 64 bytes, header says"},
		{"truncated in blobs", good[:len(good)/2], pub, ErrTruncated, "header says"},
		{"truncated by one byte", good[:len(good)-1], pub, ErrTruncated, "header says"},
		{"appended byte", append(bytes.Clone(good), 0), pub, ErrMalformed, "1 bytes after the"},
		{"magic", flip(good, 0), pub, ErrMalformed, "not a bunkerbuild snapshot artifact"},
		{"major version", setU16(good, 8, 2), pub, ErrVersion, "unsupported format version 2.0: this build reads major version 1"},
		{"minor version", setU16(good, 10, 1), pub, ErrMalformed, "header says version 1.1, signed manifest says 1.0"},
		{"flags", setU64(good, 12, 1), pub, ErrMalformed, "header flags"},
		{"reserved", setU64(good, 56, 1), pub, ErrMalformed, "reserved field"},
		{"file size grown", setU64(good, 16, h.fileSize+1), pub, ErrTruncated, "header says"},
		{"file size shrunk", setU64(good, 16, h.fileSize-1), pub, ErrMalformed, "1 bytes after the"},
		{"manifest offset back", setU64(good, 24, h.manifestOff-1), pub, ErrSignature, "manifest: signature does not verify"},
		{"manifest offset into signature", setU64(good, 24, h.manifestOff+1), pub, ErrMalformed, "overlaps manifest"},
		{"manifest offset in header", setU64(good, 24, 8), pub, ErrMalformed, "manifest at offset 8"},
		{"manifest offset past end", setU64(good, 24, h.fileSize+1), pub, ErrMalformed, "outside the file"},
		{"manifest offset huge", setU64(good, 24, 1<<64-1), pub, ErrMalformed, "outside the file"},
		{"manifest size shorter", setU64(good, 32, h.manifestSize-1), pub, ErrSignature, "signature does not verify"},
		{"manifest size over limit", setU64(good, 32, MaxManifestSize+1), pub, ErrLimit, "manifest: limit exceeded: 1048577 bytes, over 1048576"},
		{"manifest size past end", setU64(good, 32, h.fileSize), pub, ErrMalformed, "outside the file"},
		{"signature offset", setU64(good, 40, h.signatureOff-1), pub, ErrMalformed, "overlaps"},
		{"signature size", setU64(good, 48, 63), pub, ErrMalformed, "signature is 63 bytes, want 64"},
		{"manifest byte", flip(good, h.manifestOff+h.manifestSize/2), pub, ErrSignature, "signature does not verify with key " + KeyID(pub)},
		{"signature byte", flip(good, h.signatureOff+10), pub, ErrSignature, "signature does not verify"},
		{"wrong key", good, otherPub, ErrSignature, "signature does not verify with key " + KeyID(otherPub)},

		// Signed manifests that are wrong: a signer bug, or a compromised key.
		{"manifest not canonical", withManifest(t, good, append(bytes.Clone(mb), ' ')), pub, ErrMalformed, "not in canonical form"},
		{"manifest duplicate key", withManifest(t, good, bytes.Replace(mb, []byte(`{"format"`), []byte(`{"vcpus":3,"format"`), 1)), pub, ErrMalformed, "not in canonical form"},
		{"manifest unknown field", withManifest(t, good, bytes.Replace(mb, []byte(`{"format"`), []byte(`{"extra":1,"format"`), 1)), pub, ErrMalformed, `unknown field "extra"`},
		{"manifest not JSON", withManifest(t, good, []byte("not json")), pub, ErrMalformed, "manifest: invalid character"},
		{"manifest uppercase digest", withManifest(t, good, bytes.Replace(mb, []byte(vcpu0.SHA256.String()), []byte(strings.ToUpper(vcpu0.SHA256.String())), 1)), pub, ErrMalformed, "not lowercase hex"},
		{"format name", mutated(t, good, func(m *Manifest) { m.Format = "other" }), pub, ErrMalformed, `manifest format "other"`},
		{"manifest major version", mutated(t, good, func(m *Manifest) { m.Version.Major = 2 }), pub, ErrVersion, "2.0 in manifest"},
		{"vcpus", mutated(t, good, func(m *Manifest) { m.VCPUs = 0 }), pub, ErrMalformed, "vcpus 0 out of range"},
		{"profile", mutated(t, good, func(m *Manifest) { m.Profile = "" }), pub, ErrMalformed, "profile is empty"},
		{"control character", mutated(t, good, func(m *Manifest) { m.Recipe = "x\x1b[2J" }), pub, ErrMalformed, "control character"},
		{"label key", mutated(t, good, func(m *Manifest) { m.Labels["A B"] = "" }), pub, ErrMalformed, "label key"},
		{"blob name", mutated(t, good, func(m *Manifest) { m.Blobs[0].Name = "../etc" }), pub, ErrMalformed, `name "../etc"`},
		{"blob names unsorted", mutated(t, good, func(m *Manifest) { m.Blobs[0], m.Blobs[1] = m.Blobs[1], m.Blobs[0] }), pub, ErrMalformed, "must be unique and sorted"},
		{"blob names duplicate", mutated(t, good, func(m *Manifest) { m.Blobs[1].Name = m.Blobs[0].Name }), pub, ErrMalformed, "must be unique and sorted"},
		{"too many blobs", mutated(t, good, func(m *Manifest) { m.Blobs = manyBlobs }), pub, ErrLimit, "1025 blobs, over 1024"},
		{"blob past end", mutated(t, good, func(m *Manifest) { m.Blobs[0].Offset = 1 << 40 }), pub, ErrMalformed, `blob "devices/empty" at offset`},
		{"blob offset overflow", mutated(t, good, func(m *Manifest) { m.Blobs[1].Offset, m.Blobs[1].Size = 1<<64-1, 2 }), pub, ErrMalformed, "outside the file"},
		{"blob size overflow", mutated(t, good, func(m *Manifest) { m.Blobs[1].Size = 1<<64 - 10 }), pub, ErrLimit, "over 67108864"},
		{"blob over size limit", mutated(t, good, func(m *Manifest) { m.Blobs[1].Size = MaxBlobSize + 1 }), pub, ErrLimit, `blob "devices/serial0": limit exceeded`},
		{"blob in header", mutated(t, good, func(m *Manifest) { m.Blobs[1].Offset = 0 }), pub, ErrMalformed, "outside the file"},
		{"blobs overlap", mutated(t, good, func(m *Manifest) { m.Blobs[1].Offset = vcpu0.Offset + 1 }), pub, ErrMalformed, `blob "devices/serial0" at offset 65 overlaps blob "vcpu/0"`},
		{"blob overlaps manifest", mutated(t, good, func(m *Manifest) { m.Blobs[1].Offset = h.manifestOff - 1 }), pub, ErrMalformed, "overlaps"},
		{"blob unaccounted bytes", mutated(t, good, func(m *Manifest) { m.Blobs[0].Size++ }), pub, ErrMalformed, "overlaps"},
		{"reserved name", mutated(t, good, func(m *Manifest) { m.Blobs[2].Name = "memory/x" }), pub, ErrMalformed, "must be unique and sorted"},
		{"memory layout missing", mutated(t, good, func(m *Manifest) { m.Memory = nil }), pub, ErrMalformed, "memory blobs without a memory layout"},
		{"memory blob missing", mutated(t, good, func(m *Manifest) { m.Blobs = append(m.Blobs[:2], m.Blobs[3:]...) }), pub, ErrMalformed, `not both blobs "memory" and "memory/extents"`},
		{"memory page size", mutated(t, good, func(m *Manifest) { m.Memory.PageSize = 2 << 20 }), pub, ErrMalformed, "page size 2097152"},
		{"memory no regions", mutated(t, good, func(m *Manifest) { m.Memory.Regions = nil }), pub, ErrMalformed, "no regions"},
		{"memory region unaligned", mutated(t, good, func(m *Manifest) { m.Memory.Regions[0].GPA = 1 }), pub, ErrMalformed, "not aligned"},
		{"memory region empty", mutated(t, good, func(m *Manifest) { m.Memory.Regions[0].Size = 0 }), pub, ErrMalformed, "empty"},
		{"memory region wraps", mutated(t, good, func(m *Manifest) { m.Memory.Regions[1].Size = -m.Memory.Regions[1].GPA }), pub, ErrMalformed, "wraps"},
		{"memory regions overlap", mutated(t, good, func(m *Manifest) { m.Memory.Regions[1].GPA = PageSize }), pub, ErrMalformed, "overlaps or precedes"},
		{"memory too large", mutated(t, good, func(m *Manifest) { m.Memory.Regions[1].Size = MaxMemorySize }), pub, ErrLimit, "memory regions total over"},
		{"memory too many regions", mutated(t, good, func(m *Manifest) { m.Memory.Regions = manyRegions }), pub, ErrLimit, "65 memory regions, over 64"},
		{"memory data larger than memory", mutated(t, good, func(m *Manifest) { m.Memory.Regions = m.Memory.Regions[:1]; m.Memory.Regions[0].Size = PageSize }), pub, ErrMalformed, "more than the 4096 bytes of guest memory"},
		{"extent table not whole", mutated(t, good, func(m *Manifest) { m.Blobs[3].Size-- }), pub, ErrMalformed, "not a multiple of 16"},
		{"extent table over limit", mutated(t, good, func(m *Manifest) { m.Blobs[3].Size = (MaxExtents + 1) * extentSize }), pub, ErrLimit, "8388609 extents, over 8388608"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, path, err := openBytes(t, tc.b, tc.pub)
			if a != nil {
				t.Fatal("Open succeeded")
			}
			wantErr(t, err, tc.target, "artifact "+path+": ")
			wantErr(t, err, tc.target, tc.msg)
		})
	}
}

// TestBlobTampering covers changes to blob contents, which Open cannot see
// and the blob readers must.
func TestBlobTampering(t *testing.T) {
	good := exampleBytes(t)
	pub, _ := testKey()
	vcpu0 := blobInfo(t, good, "vcpu/0")
	mem := blobInfo(t, good, MemoryBlob)
	ext := blobInfo(t, good, MemoryExtentsBlob)

	t.Run("small blob", func(t *testing.T) {
		a, path, err := openBytes(t, flip(good, vcpu0.Offset+vcpu0.Size-1), pub)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("artifact %s: blob \"vcpu/0\": digest mismatch", path)
		_, err = a.Blob("vcpu/0")
		wantErr(t, err, ErrDigest, want)
		r, err := a.OpenBlob("vcpu/0")
		if err != nil {
			t.Fatal(err)
		}
		var n int
		buf := make([]byte, 100)
		for err == nil {
			var k int
			k, err = r.Read(buf)
			n += k
		}
		wantErr(t, err, ErrDigest, want)
		if n != int(vcpu0.Size) {
			t.Errorf("read %d bytes before the error, want %d", n, vcpu0.Size)
		}
		if _, err2 := r.Read(buf); err2 != err {
			t.Errorf("Read after the digest error = %v, want the same error", err2)
		}
		wantErr(t, a.VerifyBlobs(), ErrDigest, want)
		if _, err := a.Blob("vcpu/1"); err != nil {
			t.Errorf("other blob: %v", err)
		}
	})

	restore := func(t *testing.T, b []byte) (error, []MemRegion, string) {
		a, path, err := openBytes(t, b, pub)
		if err != nil {
			t.Fatal(err)
		}
		regions := []MemRegion{{0, make([]byte, 16*PageSize)}, {1 << 32, make([]byte, 8*PageSize)}}
		return a.RestoreMemory(regions), regions, path
	}
	t.Run("memory data", func(t *testing.T) {
		err, regions, path := restore(t, flip(good, mem.Offset+mem.Size-1))
		wantErr(t, err, ErrDigest, fmt.Sprintf("artifact %s: blob \"memory\": digest mismatch", path))
		wantErr(t, err, ErrDigest, "must not be resumed")
		// The data was written: the error is what tells the caller.
		if bytes.Equal(regions[0].Data, make([]byte, len(regions[0].Data))) {
			t.Error("nothing was restored; the test does not test streaming")
		}
	})
	t.Run("memory extents", func(t *testing.T) {
		err, regions, path := restore(t, flip(good, ext.Offset+3))
		wantErr(t, err, ErrDigest, fmt.Sprintf("artifact %s: blob \"memory/extents\": digest mismatch", path))
		for _, r := range regions {
			if !bytes.Equal(r.Data, make([]byte, len(r.Data))) {
				t.Errorf("region %#x written before the extent table was verified", r.GPA)
			}
		}
	})
}

func TestParseExtents(t *testing.T) {
	regions := []Region{{0, 16 * PageSize}, {16 * PageSize, 4 * PageSize}, {1 << 32, 8 * PageSize}}
	table := func(es ...Extent) []byte {
		var b []byte
		for _, e := range es {
			b = binary.LittleEndian.AppendUint64(b, e.GPA)
			b = binary.LittleEndian.AppendUint64(b, e.Len)
		}
		return b
	}
	const P = PageSize
	for _, tc := range []struct {
		name string
		tb   []byte
		data uint64
		msg  string // "" if valid
	}{
		{"empty", nil, 0, ""},
		{"valid", table(Extent{0, P}, Extent{2 * P, 14 * P}, Extent{16 * P, 4 * P}, Extent{1<<32 + 7*P, P}), 20 * P, ""},
		{"adjacent regions, separate extents", table(Extent{15 * P, P}, Extent{16 * P, P}), 2 * P, ""},
		{"partial entry", table(Extent{0, P})[:15], P, "not a multiple of 16"},
		{"zero length", table(Extent{0, 0}), 0, "empty"},
		{"unaligned address", table(Extent{1, P}), P, "not aligned"},
		{"unaligned length", table(Extent{0, P + 1}), P + 1, "not aligned"},
		{"wraps", table(Extent{1<<64 - P, 2 * P}), 2 * P, "wraps"},
		{"overlap", table(Extent{0, 2 * P}, Extent{P, P}), 3 * P, "not after the previous extent's end"},
		{"unsorted", table(Extent{2 * P, P}, Extent{0, P}), 2 * P, "not after the previous extent's end"},
		{"duplicate", table(Extent{0, P}, Extent{0, P}), 2 * P, "not after the previous extent's end"},
		{"spans two regions", table(Extent{15 * P, 2 * P}), 2 * P, "not inside one memory region"},
		{"in a hole", table(Extent{1 << 20, P}), P, "not inside one memory region"},
		{"past the last region", table(Extent{1<<32 + 8*P, P}), P, "not inside one memory region"},
		{"runs past its region", table(Extent{1<<32 + 7*P, 2 * P}), 2 * P, "not inside one memory region"},
		{"huge length", table(Extent{1 << 32, 1 << 40}), 1 << 40, "not inside one memory region"},
		{"data size short", table(Extent{0, P}), P - 1, "extents hold 4096 bytes, blob \"memory\" has 4095"},
		{"data size long", table(Extent{0, P}), P + 1, "extents hold 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exts, err := parseExtents(tc.tb, regions, tc.data)
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(exts) != len(tc.tb)/extentSize {
					t.Errorf("%d extents, want %d", len(exts), len(tc.tb)/extentSize)
				}
				return
			}
			wantErr(t, err, ErrMalformed, tc.msg)
		})
	}
}
