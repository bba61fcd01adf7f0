package snapshots

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	"github.com/bunkerbuild/bunkerbuild/internal/jsonstrict"
)

// Artifact is an opened artifact whose signature and manifest have been
// verified. Its blobs are checked as they are read; [Artifact.Verify]
// checks them all.
type Artifact struct {
	path     string
	root     *os.Root
	desc     ocispec.Descriptor // the snapshot manifest
	manifest ocispec.Manifest
	config   *Config
	signer   ed25519.PublicKey // the key whose signature verified
	verified bool              // Verify succeeded
}

// Open opens the artifact directory path and verifies, in this order, that
// it is an OCI layout, that index.json names one snapshot manifest, that a
// signature manifest for it carries an Ed25519 signature by pub over its
// digest, that the manifest has that digest and is well formed, and that
// the config it names has its digest and is valid. Nothing of the
// artifact is trusted before its signature verifies, and nothing is
// parsed beyond the small index and signature manifests before then.
func Open(path string, pub ed25519.PublicKey) (*Artifact, error) {
	if pub == nil {
		return nil, errNoKey
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("open %s: public key is %d bytes, want %d", path, len(pub), ed25519.PublicKeySize)
	}
	root, err := os.OpenRoot(path)
	if err != nil {
		return nil, fmt.Errorf("open artifact: %w", err)
	}
	a := &Artifact{path: path, root: root, signer: pub}
	if err := a.open(pub); err != nil {
		root.Close()
		return nil, fmt.Errorf("artifact %s: %w", path, err)
	}
	return a, nil
}

// Close releases the artifact's directory.
func (a *Artifact) Close() error { return a.root.Close() }

// KeyID names the key whose signature Open verified.
func (a *Artifact) KeyID() string { return KeyID(a.signer) }

// Path returns the artifact's directory.
func (a *Artifact) Path() string { return a.path }

// Digest returns the digest of the snapshot manifest, which names the
// artifact.
func (a *Artifact) Digest() digest.Digest { return a.desc.Digest }

// Config returns a copy of the verified config.
func (a *Artifact) Config() Config {
	c := *a.config
	c.CPUID = slices.Clone(c.CPUID)
	c.Memory.Regions = slices.Clone(c.Memory.Regions)
	c.Memory.Chunks = slices.Clone(c.Memory.Chunks)
	return c
}

// Layers returns the manifest's layer descriptors.
func (a *Artifact) Layers() []ocispec.Descriptor { return slices.Clone(a.manifest.Layers) }

// Size returns the bytes of the blobs the manifest names, config and
// manifest included.
func (a *Artifact) Size() int64 {
	n := a.desc.Size + a.manifest.Config.Size
	for _, l := range a.manifest.Layers {
		n += l.Size
	}
	return n
}

func (a *Artifact) open(pub ed25519.PublicKey) error {
	layout, err := a.readFile(ocispec.ImageLayoutFile, 1<<10)
	if err != nil {
		return err
	}
	var lay ocispec.ImageLayout
	if err := jsonstrict.Decode(layout, &lay); err != nil || lay.Version != ocispec.ImageLayoutVersion {
		return fmt.Errorf("%w: %s is not an OCI layout version %s", ErrMalformed, ocispec.ImageLayoutFile, ocispec.ImageLayoutVersion)
	}
	ib, err := a.readFile(ocispec.ImageIndexFile, MaxIndexSize)
	if err != nil {
		return err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(ib, &idx); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMalformed, ocispec.ImageIndexFile, err)
	}
	if len(idx.Manifests) > MaxIndexEntries {
		return fmt.Errorf("%w: %s lists %d manifests, over %d", ErrLimit, ocispec.ImageIndexFile, len(idx.Manifests), MaxIndexEntries)
	}
	var snaps, sigs []ocispec.Descriptor
	for _, d := range idx.Manifests {
		switch d.ArtifactType {
		case ArtifactType:
			snaps = append(snaps, d)
		case SignatureArtifactType:
			sigs = append(sigs, d)
		}
	}
	if len(snaps) != 1 {
		return fmt.Errorf("%w: %s lists %d snapshot manifests, want 1", ErrMalformed, ocispec.ImageIndexFile, len(snaps))
	}
	a.desc = snaps[0]
	if err := checkDescriptor(a.desc, ocispec.MediaTypeImageManifest, MaxManifestSize); err != nil {
		return fmt.Errorf("snapshot manifest: %w", err)
	}
	if err := a.checkSignatures(sigs, pub); err != nil {
		return err
	}
	// From here on the manifest digest is trusted.
	mb, err := a.readBlob(a.desc, MaxManifestSize)
	if err != nil {
		return fmt.Errorf("snapshot manifest: %w", err)
	}
	if err := jsonstrict.Decode(mb, &a.manifest); err != nil {
		return fmt.Errorf("%w: snapshot manifest: %w", ErrMalformed, err)
	}
	if err := a.checkManifest(); err != nil {
		return err
	}
	cb, err := a.readBlob(a.manifest.Config, MaxConfigSize)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if a.config, err = decodeConfig(cb); err != nil {
		return err
	}
	return a.checkLayers()
}

// checkSignatures accepts the artifact if one of the signature manifests
// carries a signature by pub over the snapshot manifest's digest.
func (a *Artifact) checkSignatures(sigs []ocispec.Descriptor, pub ed25519.PublicKey) error {
	if len(sigs) == 0 {
		return fmt.Errorf("%w: %s lists no signature manifest", ErrUnsigned, ocispec.ImageIndexFile)
	}
	var errs []error
	for _, d := range sigs {
		err := a.checkSignature(d, pub)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("signature manifest %s: %w", d.Digest, err))
	}
	return errors.Join(errs...)
}

func (a *Artifact) checkSignature(d ocispec.Descriptor, pub ed25519.PublicKey) error {
	if err := checkDescriptor(d, ocispec.MediaTypeImageManifest, MaxSigManifest); err != nil {
		return err
	}
	b, err := a.readBlob(d, MaxSigManifest)
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := jsonstrict.Decode(b, &m); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	switch {
	case m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest || m.ArtifactType != SignatureArtifactType:
		return fmt.Errorf("%w: not a signature manifest", ErrMalformed)
	case m.Subject == nil || m.Subject.Digest != a.desc.Digest || m.Subject.Size != a.desc.Size:
		return fmt.Errorf("%w: its subject is not the snapshot manifest", ErrSignature)
	case len(m.Layers) != 1 || m.Layers[0].MediaType != MediaTypeSignature || m.Layers[0].Size != ed25519.SignatureSize:
		return fmt.Errorf("%w: want one %s layer of %d bytes", ErrMalformed, MediaTypeSignature, ed25519.SignatureSize)
	}
	if err := checkDescriptor(m.Config, ocispec.MediaTypeEmptyJSON, int64(len(ocispec.DescriptorEmptyJSON.Data))); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if b, err := a.readBlob(m.Config, m.Config.Size); err != nil {
		return fmt.Errorf("config: %w", err)
	} else if !bytes.Equal(b, ocispec.DescriptorEmptyJSON.Data) {
		return fmt.Errorf("%w: config is not the empty JSON object", ErrMalformed)
	}
	if err := checkDescriptor(m.Layers[0], MediaTypeSignature, ed25519.SignatureSize); err != nil {
		return err
	}
	sig, err := a.readBlob(m.Layers[0], ed25519.SignatureSize)
	if err != nil {
		return err
	}
	return Verify(pub, a.desc.Digest, sig)
}

// checkManifest checks the snapshot manifest's shape: the config and the
// two state layers, then memory layers.
func (a *Artifact) checkManifest() error {
	m := &a.manifest
	switch {
	case m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest:
		return fmt.Errorf("%w: snapshot manifest has schema version %d and media type %q", ErrMalformed, m.SchemaVersion, m.MediaType)
	case m.ArtifactType != ArtifactType:
		return fmt.Errorf("%w: snapshot manifest has artifact type %q, want %q", ErrVersion, m.ArtifactType, ArtifactType)
	case m.Subject != nil:
		return fmt.Errorf("%w: snapshot manifest has a subject", ErrMalformed)
	case len(m.Layers) < 2 || len(m.Layers) > 2+MaxChunks+MaxDisks:
		return fmt.Errorf("%w: snapshot manifest has %d layers", ErrMalformed, len(m.Layers))
	}
	if err := checkDescriptor(m.Config, MediaTypeConfig, MaxConfigSize); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for i, want := range []string{MediaTypeVCPUState, MediaTypeDeviceState} {
		if err := checkDescriptor(m.Layers[i], want, MaxStateSize); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

// checkLayers checks the memory and disk layers against the config's
// chunk and disk lists.
func (a *Artifact) checkLayers() error {
	chunks, disks := a.config.Memory.Chunks, a.config.Disks
	if len(a.manifest.Layers) != 2+len(chunks)+len(disks) {
		return fmt.Errorf("%w: %d memory and disk layers for %d chunks and %d disks in the config", ErrMalformed, len(a.manifest.Layers)-2, len(chunks), len(disks))
	}
	for i, d := range disks {
		l := a.manifest.Layers[2+len(chunks)+i]
		if err := checkDescriptor(l, MediaTypeDisk, int64(d.Size)); err != nil {
			return fmt.Errorf("disk %d (%s): %w", i, d.ID, err)
		}
		if uint64(l.Size) != d.Size {
			return fmt.Errorf("%w: disk %d (%s): layer of %d bytes, the config says %d", ErrMalformed, i, d.ID, l.Size, d.Size)
		}
	}
	for i, c := range chunks {
		l := a.manifest.Layers[i+2]
		if err := checkDescriptor(l, c.encoding(), int64(c.storedSize())); err != nil {
			return fmt.Errorf("memory chunk %d at %#x: %w", i, c.GPA, err)
		}
		if uint64(l.Size) != c.storedSize() {
			return fmt.Errorf("%w: memory chunk %d at %#x: layer of %d bytes, the config implies %d", ErrMalformed, i, c.GPA, l.Size, c.storedSize())
		}
	}
	return nil
}

// checkDescriptor checks a descriptor's media type, digest and size, and
// refuses the fields that would make a reader look elsewhere.
func checkDescriptor(d ocispec.Descriptor, mediaType string, max int64) error {
	if d.MediaType != mediaType {
		return fmt.Errorf("%w: media type %.80q, want %q", ErrMalformed, d.MediaType, mediaType)
	}
	if err := checkDigest(d.Digest); err != nil {
		return err
	}
	if len(d.URLs) != 0 || d.Data != nil || d.Platform != nil {
		return fmt.Errorf("%w: descriptor %s has urls, data or platform: blobs must be in the layout", ErrMalformed, d.Digest)
	}
	if d.Size <= 0 || d.Size > max {
		return fmt.Errorf("%w: blob %s of %d bytes, want 1 to %d", ErrLimit, d.Digest, d.Size, max)
	}
	return nil
}

// readFile reads a small file of the layout, refusing one over max bytes.
func (a *Artifact) readFile(name string, max int64) ([]byte, error) {
	f, err := a.root.Open(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %s is over %d bytes", ErrLimit, name, max)
	}
	return b, nil
}

// openBlob opens the blob d names and checks that it is a regular file of
// d's size.
func (a *Artifact) openBlob(d ocispec.Descriptor) (*os.File, error) {
	p, err := blobPath(d.Digest)
	if err != nil {
		return nil, err
	}
	f, err := a.root.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: blob %s is missing", ErrTruncated, d.Digest)
		}
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	st, err := f.Stat()
	switch {
	case err != nil:
	case !st.Mode().IsRegular():
		err = fmt.Errorf("%w: blob %s is not a regular file", ErrMalformed, d.Digest)
	case st.Size() < d.Size:
		err = fmt.Errorf("%w: blob %s has %d bytes, the manifest says %d", ErrTruncated, d.Digest, st.Size(), d.Size)
	case st.Size() > d.Size:
		err = fmt.Errorf("%w: blob %s has %d bytes, the manifest says %d", ErrMalformed, d.Digest, st.Size(), d.Size)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readBlob reads a blob of at most max bytes and checks its digest.
func (a *Artifact) readBlob(d ocispec.Descriptor, max int64) ([]byte, error) {
	if d.Size > max {
		return nil, fmt.Errorf("%w: blob %s of %d bytes, over %d", ErrLimit, d.Digest, d.Size, max)
	}
	f, err := a.openBlob(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, d.Size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("%w: blob %s: %w", ErrTruncated, d.Digest, err)
	}
	if got := digest.SHA256.FromBytes(b); got != d.Digest {
		return nil, digestErr(d, got)
	}
	return b, nil
}

func digestErr(d ocispec.Descriptor, got digest.Digest) error {
	return fmt.Errorf("%w: blob %s (%s) hashes to %s", ErrDigest, d.Digest, d.MediaType, got)
}

// VCPUState returns the verified vCPU state layer.
func (a *Artifact) VCPUState() ([]byte, error) { return a.readBlob(a.manifest.Layers[0], MaxStateSize) }

// DeviceState returns the verified device state layer.
func (a *Artifact) DeviceState() ([]byte, error) {
	return a.readBlob(a.manifest.Layers[1], MaxStateSize)
}

// Verify checks the digest of every layer, memory included, and the
// structure of every sparse memory chunk.
// Layers are hashed in parallel, one per CPU.
func (a *Artifact) Verify() error {
	layers := a.manifest.Layers
	errs := make([]error, len(layers))
	parallel(len(layers), func(i int) { errs[i] = a.verifyLayer(i, layers[i]) })
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("artifact %s: layer %d: %w", a.path, i, err)
		}
	}
	a.verified = true
	return nil
}

func (a *Artifact) verifyLayer(i int, l ocispec.Descriptor) (err error) {
	f, err := a.openBlob(l)
	if err != nil {
		return err
	}
	defer f.Close()
	dg := digest.SHA256.Digester()
	r := io.TeeReader(bufio.NewReaderSize(f, 1<<20), dg.Hash())
	if l.MediaType == MediaTypeMemorySparse {
		c := a.config.Memory.Chunks[i-2]
		bitmap := make([]byte, PageSize)
		if _, err := io.ReadFull(r, bitmap); err != nil {
			return fmt.Errorf("%w: %w", ErrTruncated, err)
		}
		defer func() {
			if err == nil {
				err = checkBitmap(c, bitmap)
			}
		}()
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	if got := dg.Digest(); got != l.Digest {
		return digestErr(l, got)
	}
	return nil
}

// Mapper maps size bytes of f from offset off over guest-physical memory
// at gpa, copy-on-write: afterwards the guest reads f's bytes there, and
// its writes do not reach f. gpa, size and off are page-aligned.
type Mapper func(gpa, size uint64, f *os.File, off int64) error

// RestoreMemory fills guest memory, dst, from the artifact's memory
// chunks. dst must be the config's regions, zero-filled. Call Verify
// first: RestoreMemory refuses an artifact that has not been verified.
// With a mapper, every stored page is mapped copy-on-write from its blob
// (raw chunks whole, sparse chunks run by run), so that guests resumed
// from one artifact share the pages none of them has written; without
// one, the chunks are copied and their digests checked again as they are
// read. If it fails, dst holds unverified bytes and the guest
// must not run.
func (a *Artifact) RestoreMemory(dst []MemRegion, mapper Mapper) error {
	if !a.verified {
		return errors.New("restore memory: the artifact has not been verified")
	}
	regions := a.config.Memory.Regions
	if len(dst) != len(regions) {
		return fmt.Errorf("restore memory: %d destination regions for %d regions in the artifact", len(dst), len(regions))
	}
	for i, r := range regions {
		if dst[i].GPA != r.GPA || uint64(len(dst[i].Data)) != r.Size {
			return fmt.Errorf("restore memory: destination region %d is %#x+%#x, the artifact's is %#x+%#x", i, dst[i].GPA, len(dst[i].Data), r.GPA, r.Size)
		}
	}
	for i, c := range a.config.Memory.Chunks {
		var target []byte
		for j, r := range regions {
			if c.GPA >= r.GPA && c.GPA-r.GPA < r.Size {
				off := c.GPA - r.GPA
				target = dst[j].Data[off : off+c.Size]
			}
		}
		if err := a.restoreChunk(c, a.manifest.Layers[i+2], target, mapper); err != nil {
			return fmt.Errorf("artifact %s: memory chunk %d at %#x: %w", a.path, i, c.GPA, err)
		}
	}
	return nil
}

func (a *Artifact) restoreChunk(c Chunk, l ocispec.Descriptor, dst []byte, mapper Mapper) error {
	f, err := a.openBlob(l)
	if err != nil {
		return err
	}
	defer f.Close()
	if mapper != nil {
		return mapChunk(c, l, f, mapper)
	}
	dg := digest.SHA256.Digester()
	r := io.TeeReader(bufio.NewReaderSize(f, 1<<20), dg.Hash())
	if l.MediaType == MediaTypeMemoryRaw {
		_, err = io.ReadFull(r, dst)
	} else {
		header := make([]byte, PageSize)
		if _, err = io.ReadFull(r, header); err == nil {
			if err = checkBitmap(c, header); err == nil {
				err = readSparse(r, header, dst)
			}
		}
	}
	if err != nil {
		return err
	}
	if got := dg.Digest(); got != l.Digest {
		return digestErr(l, got)
	}
	return nil
}

// mapChunk maps a verified chunk's pages from its blob: a raw chunk whole,
// a sparse one run of stored pages by run.
func mapChunk(c Chunk, l ocispec.Descriptor, f *os.File, mapper Mapper) error {
	if err := checkPrivate(f); err != nil {
		return err
	}
	if l.MediaType == MediaTypeMemoryRaw {
		return mapper(c.GPA, c.Size, f, 0)
	}
	header := make([]byte, PageSize)
	if _, err := io.ReadFull(f, header); err != nil {
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	if err := checkBitmap(c, header); err != nil {
		return err
	}
	return runs(header, c.Size/PageSize, func(page, stored, n uint64) error {
		return mapper(c.GPA+page*PageSize, n*PageSize, f, int64(PageSize+stored*PageSize))
	})
}

// checkPrivate refuses to map a blob others could change under the guest:
// a MAP_PRIVATE mapping shows later writes to the file in pages the guest
// has not written yet, so the file must be writable only by this user or
// root.
func checkPrivate(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := private(st); err != nil {
		return fmt.Errorf("blob %s %w; not mapping it", f.Name(), err)
	}
	return nil
}

// private says why a file others could write is not private: one that
// group or others may write, or that belongs to neither root nor this
// user. It returns nil for a private file.
func private(st os.FileInfo) error {
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("is writable by group or others (mode %v)", st.Mode().Perm())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && sys.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("is owned by uid %d, neither root nor this user", sys.Uid)
	}
	return nil
}

// String describes the artifact in one line.
func (a *Artifact) String() string {
	return fmt.Sprintf("%s (%s, %d vCPUs, %d MiB)", a.path, a.desc.Digest, a.config.VCPUs, a.config.Memory.Size()>>20)
}

// Disks returns the captured disks.
func (a *Artifact) Disks() []Disk { return slices.Clone(a.config.Disks) }

// diskLayer returns disk i's layer.
func (a *Artifact) diskLayer(i int) (ocispec.Descriptor, error) {
	if i < 0 || i >= len(a.config.Disks) {
		return ocispec.Descriptor{}, fmt.Errorf("artifact %s has no disk %d", a.path, i)
	}
	return a.manifest.Layers[2+len(a.config.Memory.Chunks)+i], nil
}

// OpenDisk opens disk i's image read-only, for a read-only disk: the
// guest cannot change it, and others must not either, so the blob must
// be private (see RestoreMemory). Call Verify first.
func (a *Artifact) OpenDisk(i int) (*os.File, error) {
	if !a.verified {
		return nil, errors.New("open disk: the artifact has not been verified")
	}
	l, err := a.diskLayer(i)
	if err != nil {
		return nil, err
	}
	f, err := a.openBlob(l)
	if err != nil {
		return nil, err
	}
	if err := checkPrivate(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CopyDisk writes disk i's image, as captured, to a new file at path,
// sparse where the image is zero; the digest is checked again as it is
// read. path must not exist; the copy is made under a temporary name
// and renamed into place when complete and synced. Call Verify first.
func (a *Artifact) CopyDisk(i int, path string) error {
	if !a.verified {
		return errors.New("copy disk: the artifact has not been verified")
	}
	l, err := a.diskLayer(i)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("disk %d: %s exists; a resumed disk starts from the captured image, so give a path that does not exist", i, path)
	}
	src, err := a.openBlob(l)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	dg := digest.SHA256.Digester()
	if err := CopySparse(tmp, io.LimitReader(src, l.Size), dg.Hash()); err != nil {
		return fmt.Errorf("disk %d: %w", i, err)
	}
	if got := dg.Digest(); got != l.Digest {
		return digestErr(l, got)
	}
	if st, err := tmp.Stat(); err != nil || st.Size() != l.Size {
		return fmt.Errorf("%w: disk %d: blob shorter than %d bytes", ErrTruncated, i, l.Size)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// Never replace a file that appeared meanwhile: it may be a disk.
	err = unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(tmp.Name(), path); err == nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		return fmt.Errorf("disk %d: %w", i, err)
	}
	ok = true
	return fsutil.SyncDir(filepath.Dir(path))
}
