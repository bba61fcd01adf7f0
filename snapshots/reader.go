package snapshots

import (
	"cmp"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"slices"
)

// Artifact is an artifact whose signature has been verified. Its blobs are
// verified as they are read. Its methods are safe for concurrent use.
type Artifact struct {
	name   string // for errors; "" if read through NewReader
	r      io.ReaderAt
	closer io.Closer
	m      *Manifest
	blobs  map[string]BlobInfo
}

// Open opens the artifact at path, reads its header and manifest and
// verifies the manifest's signature with pub before it decodes the manifest.
// The caller must Close the Artifact.
func Open(path string, pub ed25519.PublicKey) (*Artifact, error) {
	if len(pub) == 0 {
		return nil, fmt.Errorf("artifact %s: %w", path, errNoKey)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("artifact %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("artifact %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("artifact %s: not a regular file", path)
	}
	a, err := open(path, f, fi.Size(), pub)
	if err != nil {
		f.Close()
		return nil, err
	}
	a.closer = f
	return a, nil
}

// NewReader reads an artifact of size bytes from r, as [Open] does. r must
// not change while the Artifact is in use.
func NewReader(r io.ReaderAt, size int64, pub ed25519.PublicKey) (*Artifact, error) {
	if len(pub) == 0 {
		return nil, fmt.Errorf("artifact: %w", errNoKey)
	}
	return open("", r, size, pub)
}

// Close releases the file.
func (a *Artifact) Close() error {
	if a.closer == nil {
		return nil
	}
	return a.closer.Close()
}

// errf formats an error prefixed with the artifact's name.
func (a *Artifact) errf(format string, args ...any) error {
	if a.name == "" {
		return fmt.Errorf("artifact: "+format, args...)
	}
	return fmt.Errorf("artifact %s: "+format, append([]any{a.name}, args...)...)
}

// span is a byte range of the file, for the layout check.
type span struct {
	what      string
	off, size uint64
}

func open(name string, r io.ReaderAt, size int64, pub ed25519.PublicKey) (*Artifact, error) {
	a := &Artifact{name: name, r: r}
	if len(pub) != ed25519.PublicKeySize {
		return nil, a.errf("public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	if size < headerSize {
		return nil, a.errf("%w: file is %d bytes, shorter than the %d-byte header", ErrTruncated, size, headerSize)
	}
	fsize := uint64(size)
	hb := make([]byte, headerSize)
	if err := readAt(r, hb, 0); err != nil {
		return nil, a.errf("read header: %w", err)
	}
	h, err := parseHeader(hb)
	if err != nil {
		return nil, a.errf("header: %w", err)
	}
	switch {
	case h.fileSize > fsize:
		return nil, a.errf("%w: file is %d bytes, header says %d", ErrTruncated, fsize, h.fileSize)
	case h.fileSize < fsize:
		return nil, a.errf("%w: %d bytes after the %d the header declares", ErrMalformed, fsize-h.fileSize, h.fileSize)
	}
	if h.manifestSize > MaxManifestSize {
		return nil, a.errf("manifest: %w: %d bytes, over %d", ErrLimit, h.manifestSize, MaxManifestSize)
	}
	if h.signatureSize != signatureSize {
		return nil, a.errf("%w: signature is %d bytes, want %d", ErrMalformed, h.signatureSize, signatureSize)
	}
	msp := span{"manifest", h.manifestOff, h.manifestSize}
	ssp := span{"signature", h.signatureOff, h.signatureSize}
	for _, s := range []span{msp, ssp} {
		if err := inFile(s, fsize); err != nil {
			return nil, a.errf("%w", err)
		}
	}
	if err := disjoint([]span{{"header", 0, headerSize}, msp, ssp}); err != nil {
		return nil, a.errf("%w", err)
	}

	mb := make([]byte, h.manifestSize) // at most MaxManifestSize and the file's size
	if err := readAt(r, mb, int64(h.manifestOff)); err != nil {
		return nil, a.errf("read manifest: %w", err)
	}
	sig := make([]byte, signatureSize)
	if err := readAt(r, sig, int64(h.signatureOff)); err != nil {
		return nil, a.errf("read signature: %w", err)
	}
	// Nothing below this line reads bytes that the signature does not cover,
	// except blob contents, which are checked against their digests.
	if err := Verify(pub, mb, sig); err != nil {
		return nil, a.errf("manifest: %w", err)
	}
	m, err := decodeManifest(mb)
	if err != nil {
		return nil, a.errf("%w", err)
	}
	if hv := (Version{h.major, h.minor}); m.Version != hv {
		return nil, a.errf("%w: header says version %s, signed manifest says %s", ErrMalformed, hv, m.Version)
	}
	if err := checkLayout(m, msp, ssp, fsize); err != nil {
		return nil, a.errf("%w", err)
	}
	a.m = m
	a.blobs = make(map[string]BlobInfo, len(m.Blobs))
	for _, b := range m.Blobs {
		a.blobs[b.Name] = b
	}
	return a, nil
}

// inFile checks that s lies in the file after the header.
func inFile(s span, fsize uint64) error {
	if s.off < headerSize || s.off > fsize || s.size > fsize-s.off {
		return fmt.Errorf("%w: %s at offset %d, %d bytes, is outside the file's %d bytes after the header", ErrMalformed, s.what, s.off, s.size, fsize)
	}
	return nil
}

// disjoint checks that no two spans overlap.
func disjoint(spans []span) error {
	spans = slices.Clone(spans)
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.off, b.off), cmp.Compare(a.size, b.size))
	})
	var end uint64
	var last string
	for _, s := range spans {
		if s.off < end {
			return fmt.Errorf("%w: %s at offset %d overlaps %s, which ends at %d", ErrMalformed, s.what, s.off, last, end)
		}
		end, last = s.off+s.size, s.what
	}
	return nil
}

// checkLayout checks the blobs of a signed manifest against the file.
func checkLayout(m *Manifest, msp, ssp span, fsize uint64) error {
	spans := []span{{"header", 0, headerSize}, msp, ssp}
	var mem, ext *BlobInfo
	for i := range m.Blobs {
		b := &m.Blobs[i]
		switch {
		case b.Name == MemoryBlob:
			mem = b
		case b.Name == MemoryExtentsBlob:
			ext = b
			if b.Size%extentSize != 0 {
				return fmt.Errorf("%w: blob %q: %d bytes, not a multiple of %d", ErrMalformed, b.Name, b.Size, extentSize)
			}
			if n := b.Size / extentSize; n > MaxExtents {
				return fmt.Errorf("blob %q: %w: %d extents, over %d", b.Name, ErrLimit, n, MaxExtents)
			}
		case reservedName(b.Name):
			return fmt.Errorf("%w: blob %q: name reserved for guest memory", ErrMalformed, b.Name)
		case b.Size > MaxBlobSize:
			return fmt.Errorf("blob %q: %w: %d bytes, over %d", b.Name, ErrLimit, b.Size, MaxBlobSize)
		}
		s := span{fmt.Sprintf("blob %q", b.Name), b.Offset, b.Size}
		if err := inFile(s, fsize); err != nil {
			return err
		}
		spans = append(spans, s)
	}
	if err := disjoint(spans); err != nil {
		return err
	}
	var end uint64
	for _, s := range spans {
		end = max(end, s.off+s.size)
	}
	if end != fsize {
		return fmt.Errorf("%w: %d bytes after the last section", ErrMalformed, fsize-end)
	}
	if m.Memory == nil {
		if mem != nil || ext != nil {
			return fmt.Errorf("%w: memory blobs without a memory layout in the manifest", ErrMalformed)
		}
		return nil
	}
	if mem == nil || ext == nil {
		return fmt.Errorf("%w: manifest has a memory layout but not both blobs %q and %q", ErrMalformed, MemoryBlob, MemoryExtentsBlob)
	}
	if mem.Size > m.MemorySize() {
		return fmt.Errorf("%w: blob %q: %d bytes, more than the %d bytes of guest memory", ErrMalformed, MemoryBlob, mem.Size, m.MemorySize())
	}
	return nil
}

// readAt fills p from r at off.
func readAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Manifest returns a copy of the verified manifest.
func (a *Artifact) Manifest() Manifest { return a.m.clone() }

func (a *Artifact) blob(name string) (BlobInfo, error) {
	b, ok := a.blobs[name]
	if !ok {
		return BlobInfo{}, a.errf("no blob %q", name)
	}
	return b, nil
}

// Blob returns the contents of a blob of at most [MaxBlobSize] bytes after
// checking its digest.
func (a *Artifact) Blob(name string) ([]byte, error) {
	b, err := a.blob(name)
	if err != nil {
		return nil, err
	}
	if b.Size > MaxBlobSize {
		return nil, a.errf("blob %q is %d bytes, over the %d that Blob reads; use OpenBlob", name, b.Size, MaxBlobSize)
	}
	return a.readBlob(b)
}

// readBlob reads and verifies a blob whose size the layout check bounded.
func (a *Artifact) readBlob(b BlobInfo) ([]byte, error) {
	p := make([]byte, b.Size)
	if err := readAt(a.r, p, int64(b.Offset)); err != nil {
		return nil, a.errf("blob %q: read: %w", b.Name, err)
	}
	if sum := sha256.Sum256(p); Digest(sum) != b.SHA256 {
		return nil, a.digestErr(b, sum[:])
	}
	return p, nil
}

func (a *Artifact) digestErr(b BlobInfo, sum []byte) error {
	return a.errf("blob %q: %w: manifest has sha256 %s, content has %x", b.Name, ErrDigest, b.SHA256, sum)
}

// OpenBlob returns a reader of a blob of any size. The reader hashes what it
// reads and, at the end of the blob, returns an error wrapping [ErrDigest] in
// place of io.EOF if the digest does not match: a caller must read to io.EOF
// before it trusts anything it read.
func (a *Artifact) OpenBlob(name string) (io.Reader, error) {
	b, err := a.blob(name)
	if err != nil {
		return nil, err
	}
	return &blobReader{a: a, b: b, r: io.NewSectionReader(a.r, int64(b.Offset), int64(b.Size)), h: sha256.New()}, nil
}

type blobReader struct {
	a   *Artifact
	b   BlobInfo
	r   *io.SectionReader
	h   hash.Hash
	err error
}

func (br *blobReader) Read(p []byte) (int, error) {
	if br.err != nil {
		return 0, br.err
	}
	n, err := br.r.Read(p)
	br.h.Write(p[:n])
	switch {
	case err == io.EOF:
		if sum := br.h.Sum(nil); Digest(sum) != br.b.SHA256 {
			err = br.a.digestErr(br.b, sum)
		}
	case err != nil:
		err = br.a.errf("blob %q: read: %w", br.b.Name, err)
	}
	br.err = err
	return n, err
}

// VerifyBlobs reads every blob and checks its digest, and checks the memory
// extent table against the memory layout. It reads the whole file.
func (a *Artifact) VerifyBlobs() error {
	buf := make([]byte, 1<<20)
	for _, b := range a.m.Blobs {
		r, err := a.OpenBlob(b.Name)
		if err != nil {
			return err
		}
		if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
			return err
		}
	}
	if a.m.Memory != nil {
		if _, err := a.Extents(); err != nil {
			return err
		}
	}
	return nil
}

var errNoMemory = errors.New("artifact holds no guest memory")
