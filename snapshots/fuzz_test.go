package snapshots

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzConfig feeds mutated configs to the validator: no panic, and what
// it accepts re-encodes to a config it accepts again.
func FuzzConfig(f *testing.F) {
	c := testConfig()
	c.Format, c.Version = FormatName, FormatVersion
	c.Memory = Memory{PageSize: PageSize, ChunkSize: ChunkSize,
		Regions: []Region{{GPA: 0, Size: 3 * ChunkSize}, {GPA: 1 << 32, Size: 16 * PageSize}},
		Chunks:  []Chunk{{GPA: 0, Size: ChunkSize, Pages: 4096}, {GPA: 2 * ChunkSize, Size: ChunkSize, Pages: 1}, {GPA: 1 << 32, Size: 16 * PageSize, Pages: 3}}}
	b, _ := json.Marshal(&c)
	f.Add(b)
	f.Add([]byte(`{"format":"bunkerbuild-snapshot","version":2,"memory":{"regions":[{"gpa":18446744073709547520,"size":8192}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeConfig(b)
		if err != nil {
			return
		}
		re, err := encodeConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeConfig(re); err != nil {
			t.Fatalf("accepted config re-encodes to one refused: %v", err)
		}
		for _, ch := range c.Memory.Chunks {
			if ch.storedSize() == 0 || ch.storedSize() > ch.Size+bitmapLen(ch.Size) {
				t.Fatalf("chunk %+v stored in %d bytes", ch, ch.storedSize())
			}
		}
	})
}

// FuzzArtifact signs mutated configs and layers with the test key, as a
// holder of the key could, and runs everything resume runs on them: no
// panic, and memory is written only inside the destination.
func FuzzArtifact(f *testing.F) {
	pristine := writeTest(f, testContents(f, smallMemory(f)))
	var idx ocispec.Index
	ib, _ := os.ReadFile(filepath.Join(pristine, ocispec.ImageIndexFile))
	json.Unmarshal(ib, &idx)
	blob := func(d string) []byte {
		b, _ := os.ReadFile(filepath.Join(pristine, "blobs/sha256", d))
		return b
	}
	var m ocispec.Manifest
	json.Unmarshal(blob(idx.Manifests[0].Digest.Encoded()), &m)
	for i := range m.Layers {
		f.Add(blob(m.Config.Digest.Encoded()), uint8(i), blob(m.Layers[i].Digest.Encoded()))
	}
	f.Fuzz(func(t *testing.T, config []byte, which uint8, layer []byte) {
		path := copyArtifact(t, pristine)
		os.WriteFile(filepath.Join(path, "blobs/sha256", digest.FromBytes(layer).Encoded()), layer, 0o644)
		resign(t, path, func(c *Config, m *ocispec.Manifest) {
			var cc Config
			if json.Unmarshal(config, &cc) == nil {
				*c = cc
			}
			l := &m.Layers[int(which)%len(m.Layers)]
			l.Digest, l.Size = digest.FromBytes(layer), int64(len(layer))
		})
		pub, _ := testKey()
		a, err := Open(path, pub)
		if err != nil {
			return
		}
		defer a.Close()
		if a.Verify() != nil {
			return
		}
		cfg := a.Config()
		if cfg.Memory.Size() > 16<<20 {
			return
		}
		var dst []MemRegion
		for _, r := range cfg.Memory.Regions {
			dst = append(dst, MemRegion{GPA: r.GPA, Data: make([]byte, r.Size)})
		}
		a.RestoreMemory(dst, nil)
	})
}

// smallMemory is one short region with a raw and a sparse chunk's worth
// of pages: a chunk is short at the end of a region, so this needs two.
func smallMemory(t testing.TB) []MemRegion {
	r0 := mmapZero(t, 32*PageSize)
	fillPage(r0, 3, 1)
	r1 := mmapZero(t, 4*PageSize)
	for p := range 4 {
		fillPage(r1, p, 2)
	}
	return []MemRegion{{GPA: 0, Data: r0}, {GPA: 1 << 32, Data: r1}}
}
