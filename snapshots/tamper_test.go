package snapshots

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// openAndVerify is what resume does before it maps anything.
func openAndVerify(path string, pub ed25519.PublicKey) error {
	a, err := Open(path, pub)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Verify()
}

// index reads an artifact's index.json.
func index(t *testing.T, path string) ocispec.Index {
	var idx ocispec.Index
	readJSON(t, filepath.Join(path, ocispec.ImageIndexFile), &idx)
	return idx
}

func putBlob(t *testing.T, path string, b []byte) digest.Digest {
	d := digest.FromBytes(b)
	if err := os.WriteFile(filepath.Join(path, "blobs/sha256", d.Encoded()), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// resign rewrites an artifact as a key holder could: mutate changes the
// config and the manifest, and the manifest is signed again with the test
// key. It shows the reader's checks do not rest on the signature alone.
func resign(t *testing.T, path string, mutate func(*Config, *ocispec.Manifest)) {
	t.Helper()
	idx := index(t, path)
	var m ocispec.Manifest
	readJSON(t, filepath.Join(path, "blobs/sha256", idx.Manifests[0].Digest.Encoded()), &m)
	var c Config
	readJSON(t, filepath.Join(path, "blobs/sha256", m.Config.Digest.Encoded()), &c)
	mutate(&c, &m)
	cb, _ := json.Marshal(&c)
	m.Config.Digest, m.Config.Size = putBlob(t, path, cb), int64(len(cb))
	mb, _ := json.Marshal(&m)
	md := putBlob(t, path, mb)
	_, priv := testKey()
	sig, _ := Sign(priv, md)
	sd := putBlob(t, path, sig)
	var sm ocispec.Manifest
	readJSON(t, filepath.Join(path, "blobs/sha256", idx.Manifests[1].Digest.Encoded()), &sm)
	sm.Subject.Digest, sm.Subject.Size = md, int64(len(mb))
	sm.Layers[0].Digest = sd
	smb, _ := json.Marshal(&sm)
	idx.Manifests[0].Digest, idx.Manifests[0].Size = md, int64(len(mb))
	idx.Manifests[1].Digest, idx.Manifests[1].Size = putBlob(t, path, smb), int64(len(smb))
	ib, _ := json.Marshal(&idx)
	if err := os.WriteFile(filepath.Join(path, ocispec.ImageIndexFile), ib, 0o644); err != nil {
		t.Fatal(err)
	}
	// The rewritten artifact must still open if mutate did nothing wrong.
}

// TestTamper is the refusal matrix: every way of changing an artifact
// after signing makes Open or Verify fail with a clear error.
func TestTamper(t *testing.T) {
	pub, _ := testKey()
	pristine := writeTest(t, testContents(t, testMemory(t)))
	idx := index(t, pristine)

	// A flipped byte in every blob: each layer, the config, the manifest,
	// the signature manifest and the signature.
	var blobs []string
	ents, _ := os.ReadDir(filepath.Join(pristine, "blobs/sha256"))
	for _, e := range ents {
		blobs = append(blobs, e.Name())
	}
	if len(blobs) < 9 {
		t.Fatalf("only %d blobs", len(blobs))
	}
	for _, name := range blobs {
		for _, where := range []string{"first", "middle", "last"} {
			t.Run("flip "+where+" byte of "+name[:12], func(t *testing.T) {
				path := copyArtifact(t, pristine)
				p := filepath.Join(path, "blobs/sha256", name)
				b, _ := os.ReadFile(p)
				i := map[string]int{"first": 0, "middle": len(b) / 2, "last": len(b) - 1}[where]
				b[i] ^= 0x40
				os.WriteFile(p, b, 0o644)
				err := openAndVerify(path, pub)
				if err == nil {
					t.Fatal("opened and verified")
				}
				if !errors.Is(err, ErrDigest) && !errors.Is(err, ErrSignature) {
					t.Errorf("error %v is neither a digest nor a signature error", err)
				}
			})
		}
	}

	cases := []struct {
		name   string
		change func(t *testing.T, path string)
		pub    ed25519.PublicKey
		is     error
		text   string
	}{
		{name: "wrong key", pub: ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey), is: ErrSignature},
		{name: "signature manifest not in the index", is: ErrUnsigned, change: func(t *testing.T, path string) {
			idx := index(t, path)
			idx.Manifests = idx.Manifests[:1]
			writeIndex(t, path, idx)
		}},
		{name: "signature blob missing", is: ErrTruncated, change: func(t *testing.T, path string) {
			var sm ocispec.Manifest
			readJSON(t, filepath.Join(path, "blobs/sha256", idx.Manifests[1].Digest.Encoded()), &sm)
			os.Remove(filepath.Join(path, "blobs/sha256", sm.Layers[0].Digest.Encoded()))
		}},
		{name: "signature of another artifact", is: ErrSignature, change: func(t *testing.T, path string) {
			other := writeTest(t, testContents(t, nil))
			oidx := index(t, other)
			b, _ := os.ReadFile(filepath.Join(other, "blobs/sha256", oidx.Manifests[1].Digest.Encoded()))
			putBlob(t, path, b)
			var sm ocispec.Manifest
			json.Unmarshal(b, &sm)
			sb, _ := os.ReadFile(filepath.Join(other, "blobs/sha256", sm.Layers[0].Digest.Encoded()))
			putBlob(t, path, sb)
			idx := index(t, path)
			idx.Manifests[1] = oidx.Manifests[1]
			writeIndex(t, path, idx)
		}},
		{name: "truncated memory blob", is: ErrTruncated, change: func(t *testing.T, path string) {
			l := layers(t, path)[2]
			os.Truncate(filepath.Join(path, "blobs/sha256", l.Digest.Encoded()), l.Size-100)
		}},
		{name: "truncated state blob", is: ErrTruncated, change: func(t *testing.T, path string) {
			l := layers(t, path)[0]
			os.Truncate(filepath.Join(path, "blobs/sha256", l.Digest.Encoded()), l.Size-1)
		}},
		{name: "blob replaced by a symlink out of the layout", text: "escapes", change: func(t *testing.T, path string) {
			l := layers(t, path)[1]
			p := filepath.Join(path, "blobs/sha256", l.Digest.Encoded())
			os.Remove(p)
			os.Symlink("/etc/passwd", p)
		}},
		{name: "manifest names a blob outside the layout", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(_ *Config, m *ocispec.Manifest) { m.Layers[1].Digest = "sha256:../../../../etc/passwd" })
		}},
		{name: "manifest names a blob by URL", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(_ *Config, m *ocispec.Manifest) { m.Layers[2].URLs = []string{"https://example.com/x"} })
		}},
		{name: "manifest names a sha512 blob", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(_ *Config, m *ocispec.Manifest) {
				m.Layers[0].Digest = digest.SHA512.FromString("x")
			})
		}},
		{name: "manifest with an unknown field", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(_ *Config, m *ocispec.Manifest) { m.Layers[0].ArtifactType = "x"; m.Layers[0].MediaType = "x" })
		}},
		{name: "config memory larger than the blobs", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(c *Config, _ *ocispec.Manifest) { c.Memory.Regions[0].Size += ChunkSize })
		}},
		{name: "config memory smaller than the blobs", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(c *Config, _ *ocispec.Manifest) { c.Memory.Regions[1].Size = PageSize })
		}},
		{name: "config chunk page count disagrees with the blob", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(c *Config, _ *ocispec.Manifest) { c.Memory.Chunks[1].Pages++ })
		}},
		{name: "config lists a chunk with no layer", is: ErrMalformed, change: func(t *testing.T, path string) {
			resign(t, path, func(c *Config, _ *ocispec.Manifest) {
				c.Memory.Chunks = append(c.Memory.Chunks, Chunk{GPA: 2 * ChunkSize, Size: ChunkSize, Pages: 1})
			})
		}},
		{name: "newer format version", is: ErrVersion, change: func(t *testing.T, path string) {
			resign(t, path, func(c *Config, _ *ocispec.Manifest) { c.Version = FormatVersion + 1 })
		}},
		{name: "no index", is: ErrMalformed, change: func(t *testing.T, path string) {
			os.Remove(filepath.Join(path, ocispec.ImageIndexFile))
		}},
		{name: "two snapshot manifests", is: ErrMalformed, change: func(t *testing.T, path string) {
			idx := index(t, path)
			idx.Manifests = append(idx.Manifests, idx.Manifests[0])
			writeIndex(t, path, idx)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := copyArtifact(t, pristine)
			if tc.change != nil {
				tc.change(t, path)
			}
			key := pub
			if tc.pub != nil {
				key = tc.pub
			}
			err := openAndVerify(path, key)
			switch {
			case err == nil:
				t.Fatal("opened and verified")
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Errorf("error %v does not wrap %v", err, tc.is)
			case tc.text != "" && !strings.Contains(err.Error(), tc.text):
				t.Errorf("error %v does not say %q", err, tc.text)
			case !strings.Contains(err.Error(), path):
				t.Errorf("error %v does not name the artifact", err)
			}
		})
	}

	// The helper itself keeps a valid artifact valid.
	path := copyArtifact(t, pristine)
	resign(t, path, func(*Config, *ocispec.Manifest) {})
	if err := openAndVerify(path, pub); err != nil {
		t.Fatalf("re-signed unchanged artifact: %v", err)
	}
}

func writeIndex(t *testing.T, path string, idx ocispec.Index) {
	b, _ := json.Marshal(&idx)
	if err := os.WriteFile(filepath.Join(path, ocispec.ImageIndexFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func layers(t *testing.T, path string) []ocispec.Descriptor {
	var m ocispec.Manifest
	readJSON(t, filepath.Join(path, "blobs/sha256", index(t, path).Manifests[0].Digest.Encoded()), &m)
	return m.Layers
}

func copyArtifact(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy.snap")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}
