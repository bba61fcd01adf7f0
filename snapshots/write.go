package snapshots

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// Contents is what an artifact holds.
type Contents struct {
	// Config describes the machine. Write fills in Format, Version and
	// Memory from the other fields.
	Config      Config
	VCPUState   []byte      // MediaTypeVCPUState
	DeviceState []byte      // MediaTypeDeviceState
	Memory      []MemRegion // guest RAM, sorted by GPA
	Disks       []DiskImage // the guest's disks, in the guest's order
}

// DiskImage is a disk to store: its config entry and the image file,
// which Write reads from its start and does not close.
type DiskImage struct {
	Disk Disk
	File *os.File
}

// MemRegion is a region of guest RAM and the host memory that holds it.
type MemRegion struct {
	GPA  uint64
	Data []byte
}

// Written summarises a written artifact.
type Written struct {
	Manifest    digest.Digest // the snapshot manifest's digest, which the signature covers
	Bytes       int64         // bytes of all blobs
	MemoryBytes uint64        // guest memory size
	StoredPages uint64        // non-zero pages stored
	RawChunks   int           // chunks stored raw, mappable copy-on-write
	Chunks      int
}

// Write writes a signed artifact for c as an OCI image layout directory at
// out. It builds the artifact in a hidden directory next to out and
// renames it into place only when every file is written and synced, so out
// is either absent, the old artifact, or the complete new one. An existing
// out is replaced only if it is an OCI layout. Cancelling ctx stops the
// write and removes what it wrote.
func Write(ctx context.Context, out string, c Contents, key ed25519.PrivateKey) (*Written, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("write %s: private key is %d bytes, want %d", out, len(key), ed25519.PrivateKeySize)
	}
	if err := checkReplaceable(out); err != nil {
		return nil, err
	}
	fsutil.RemoveStale(filepath.Dir(out), partialPrefix(out))
	tmp, err := fsutil.OwnedDir(filepath.Dir(out), partialPrefix(out))
	if err == nil {
		err = os.Chmod(tmp, 0o755) // readable by the hosts that resume it
	}
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", out, err)
	}
	w := &layoutWriter{dir: tmp}
	sum, err := w.write(ctx, c, key)
	if err == nil {
		err = publish(tmp, out)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("write %s: %w", out, err)
	}
	return sum, nil
}

// partialPrefix returns the prefix of the hidden directories a writer of
// out fills; fsutil puts the writer's PID after it, so that a later writer
// can remove those of killed ones.
func partialPrefix(out string) string { return "." + filepath.Base(out) + ".partial-" }

// checkReplaceable refuses an out that exists and is not an artifact, so
// that a typo cannot replace a directory of something else.
func checkReplaceable(out string) error {
	st, err := os.Lstat(out)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !st.IsDir():
		return fmt.Errorf("write %s: it exists and is not an artifact directory", out)
	}
	if _, err := os.Stat(filepath.Join(out, ocispec.ImageLayoutFile)); err != nil {
		return fmt.Errorf("write %s: it exists and is not an OCI layout (no %s); not replacing it", out, ocispec.ImageLayoutFile)
	}
	return nil
}

// WriteIndex writes the files that make dir, whose blobs/sha256 holds
// the blobs, an artifact: oci-layout, then index.json naming the snapshot
// manifest (tagged DefaultTag) and its signature manifests. index.json
// comes last: a directory without it is no OCI layout. It returns the
// bytes written. Write uses it, and so does a pull that fetched the blobs.
func WriteIndex(dir string, snapshot ocispec.Descriptor, sigs []ocispec.Descriptor) (int64, error) {
	snapshot = ocispec.Descriptor{MediaType: snapshot.MediaType, Digest: snapshot.Digest, Size: snapshot.Size,
		ArtifactType: ArtifactType, Annotations: map[string]string{ocispec.AnnotationRefName: DefaultTag}}
	manifests := []ocispec.Descriptor{snapshot}
	for _, s := range sigs {
		manifests = append(manifests, ocispec.Descriptor{MediaType: s.MediaType, Digest: s.Digest, Size: s.Size, ArtifactType: SignatureArtifactType})
	}
	layout := mustJSON(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	index := mustJSON(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: manifests})
	if err := fsutil.WriteBytes(filepath.Join(dir, ocispec.ImageLayoutFile), 0o644, layout); err != nil {
		return 0, err
	}
	if err := fsutil.WriteBytes(filepath.Join(dir, ocispec.ImageIndexFile), 0o644, index); err != nil {
		return 0, err
	}
	return int64(len(layout) + len(index)), nil
}

// publish moves the finished directory tmp to out, exchanging it with an
// old artifact atomically if there is one. On file systems without
// renameat2's flags (9p, some FUSE), it falls back to moving the old
// artifact aside first: out then briefly does not exist, but it never
// holds a partial artifact.
func publish(tmp, out string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, out, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		if err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, out, unix.RENAME_EXCHANGE); err == nil {
			os.RemoveAll(tmp) // now the old artifact
		}
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = publishPlain(tmp, out)
	}
	if err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return fsutil.SyncDir(filepath.Dir(out))
}

func publishPlain(tmp, out string) error {
	if _, err := os.Lstat(out); errors.Is(err, os.ErrNotExist) {
		return os.Rename(tmp, out)
	}
	old := tmp + ".old"
	if err := os.Rename(out, old); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Rename(old, out) // put the old artifact back
		return err
	}
	return os.RemoveAll(old)
}

// layoutWriter writes blobs into an OCI layout directory.
type layoutWriter struct {
	dir   string
	bytes atomic.Int64
}

func (w *layoutWriter) write(ctx context.Context, c Contents, key ed25519.PrivateKey) (*Written, error) {
	if err := os.MkdirAll(filepath.Join(w.dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	cfg := c.Config
	cfg.Format, cfg.Version = FormatName, FormatVersion
	cfg.Memory = Memory{PageSize: PageSize, ChunkSize: ChunkSize}
	if len(c.VCPUState) == 0 || len(c.VCPUState) > MaxStateSize || len(c.DeviceState) == 0 || len(c.DeviceState) > MaxStateSize {
		return nil, fmt.Errorf("vCPU state of %d bytes and device state of %d bytes: each must be 1 to %d", len(c.VCPUState), len(c.DeviceState), MaxStateSize)
	}
	vcpu, err := w.putBytes(MediaTypeVCPUState, c.VCPUState)
	if err != nil {
		return nil, err
	}
	dev, err := w.putBytes(MediaTypeDeviceState, c.DeviceState)
	if err != nil {
		return nil, err
	}
	layers := []ocispec.Descriptor{vcpu, dev}
	sum := &Written{}
	type job struct {
		c    Chunk
		data []byte
	}
	var jobs []job
	for _, r := range c.Memory {
		if len(r.Data)%PageSize != 0 || len(r.Data) == 0 {
			return nil, fmt.Errorf("memory region at %#x: %d bytes is not a positive number of pages", r.GPA, len(r.Data))
		}
		size := uint64(len(r.Data))
		cfg.Memory.Regions = append(cfg.Memory.Regions, Region{GPA: r.GPA, Size: size})
		sum.MemoryBytes += size
		for off := uint64(0); off < size; off += ChunkSize {
			data := r.Data[off : off+min(ChunkSize, size-off)]
			jobs = append(jobs, job{Chunk{GPA: r.GPA + off, Size: uint64(len(data))}, data})
		}
	}
	// Scan, hash and write the chunks in parallel, one per CPU; the
	// layers keep the chunks' order.
	descs := make([]ocispec.Descriptor, len(jobs))
	errs := make([]error, len(jobs))
	parallel(len(jobs), func(i int) {
		j := &jobs[i]
		if errs[i] = ctx.Err(); errs[i] != nil {
			return
		}
		if j.c.Pages = scanChunk(j.data); j.c.Pages != 0 {
			descs[i], errs[i] = w.putChunk(j.c, j.data)
		}
	})
	for i, j := range jobs {
		if errs[i] != nil {
			return nil, fmt.Errorf("memory chunk at %#x: %w", j.c.GPA, errs[i])
		}
		if j.c.Pages == 0 {
			continue
		}
		cfg.Memory.Chunks = append(cfg.Memory.Chunks, j.c)
		layers = append(layers, descs[i])
		sum.StoredPages += j.c.Pages
		if descs[i].MediaType == MediaTypeMemoryRaw {
			sum.RawChunks++
		}
	}
	sum.Chunks = len(cfg.Memory.Chunks)
	cfg.Disks = nil
	for i, d := range c.Disks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		desc, err := w.putDisk(d)
		if err != nil {
			return nil, fmt.Errorf("disk %d (%s): %w", i, d.Disk.ID, err)
		}
		cfg.Disks = append(cfg.Disks, d.Disk)
		layers = append(layers, desc)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cb, err := encodeConfig(&cfg)
	if err != nil {
		return nil, err
	}
	if len(cb) > MaxConfigSize {
		return nil, fmt.Errorf("%w: config of %d bytes, over %d", ErrLimit, len(cb), MaxConfigSize)
	}
	cd, err := w.putBytes(MediaTypeConfig, cb)
	if err != nil {
		return nil, err
	}
	man, err := w.putJSON(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       cd,
		Layers:       layers,
		Annotations:  map[string]string{ocispec.AnnotationCreated: cfg.Created.UTC().Format("2006-01-02T15:04:05Z")},
	}, MaxManifestSize)
	if err != nil {
		return nil, err
	}
	sig, err := w.sign(man, key)
	if err != nil {
		return nil, err
	}
	n, err := WriteIndex(w.dir, man, []ocispec.Descriptor{sig})
	if err != nil {
		return nil, err
	}
	w.bytes.Add(n)
	if err := fsutil.SyncDir(filepath.Join(w.dir, "blobs", "sha256")); err != nil {
		return nil, err
	}
	if err := fsutil.SyncDir(w.dir); err != nil {
		return nil, err
	}
	sum.Manifest = man.Digest
	sum.Bytes = w.bytes.Load()
	return sum, nil
}

// sign writes the signature manifest for man and returns its descriptor.
func (w *layoutWriter) sign(man ocispec.Descriptor, key ed25519.PrivateKey) (ocispec.Descriptor, error) {
	s, err := Sign(key, man.Digest)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	sd, err := w.putBytes(MediaTypeSignature, s)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	empty, err := w.putBytes(ocispec.MediaTypeEmptyJSON, []byte("{}"))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	subject := man
	subject.Annotations = nil
	d, err := w.putJSON(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: SignatureArtifactType,
		Config:       empty,
		Layers:       []ocispec.Descriptor{sd},
		Subject:      &subject,
		Annotations:  map[string]string{AnnotationKeyID: KeyID(key.Public().(ed25519.PublicKey))},
	}, MaxSigManifest)
	d.ArtifactType = SignatureArtifactType
	return d, err
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed OCI types are encoded
	}
	return b
}

func (w *layoutWriter) putJSON(mediaType string, v any, max int) (ocispec.Descriptor, error) {
	b := mustJSON(v)
	if len(b) > max {
		return ocispec.Descriptor{}, fmt.Errorf("%w: %s of %d bytes, over %d", ErrLimit, mediaType, len(b), max)
	}
	return w.putBytes(mediaType, b)
}

func (w *layoutWriter) putBytes(mediaType string, b []byte) (ocispec.Descriptor, error) {
	return w.putBlob(mediaType, func(bw io.Writer) error {
		_, err := bw.Write(b)
		return err
	})
}

func (w *layoutWriter) putChunk(c Chunk, data []byte) (ocispec.Descriptor, error) {
	return w.putBlob(c.encoding(), func(bw io.Writer) error { return writeChunk(bw, c, data) })
}

// putDisk stores a disk image as a blob. The blob stays sparse where
// the image has zero pages, so an empty disk costs its hash, not its size.
func (w *layoutWriter) putDisk(d DiskImage) (ocispec.Descriptor, error) {
	st, err := d.File.Stat()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if uint64(st.Size()) != d.Disk.Size {
		return ocispec.Descriptor{}, fmt.Errorf("image %s is %d bytes, the disk %d", d.File.Name(), st.Size(), d.Disk.Size)
	}
	return w.putFile(MediaTypeDisk, func(f *os.File, h io.Writer) (int64, error) {
		return st.Size(), CopySparse(f, io.NewSectionReader(d.File, 0, st.Size()), h)
	})
}

// CopySparse copies src to the start of dst, a new empty file, leaving
// holes where src has zero pages, and feeds every byte to sum if it is
// not nil. dst ends with src's size.
func CopySparse(dst *os.File, src io.Reader, sum io.Writer) error {
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			b := buf[:n]
			if sum != nil {
				sum.Write(b)
			}
			for p := 0; p < n; p += PageSize {
				page := b[p:min(p+PageSize, n)]
				if isZero(page) && len(page) == PageSize {
					continue
				}
				if _, werr := dst.WriteAt(page, off+int64(p)); werr != nil {
					return werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return dst.Truncate(off)
		}
		if err != nil {
			return err
		}
	}
}

// putBlob writes a blob through fill, names it by its digest and returns
// its descriptor. An identical blob is stored once.
func (w *layoutWriter) putBlob(mediaType string, fill func(io.Writer) error) (ocispec.Descriptor, error) {
	return w.putFile(mediaType, func(f *os.File, h io.Writer) (int64, error) {
		bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
		cw := &countWriter{w: bw}
		if err := fill(cw); err != nil {
			return 0, err
		}
		return cw.n, bw.Flush()
	})
}

// putFile makes a blob in a temporary file that write fills, feeding
// every byte to h and returning the blob's size; then it syncs the file
// and names it by its digest. An identical blob is stored once.
func (w *layoutWriter) putFile(mediaType string, write func(f *os.File, h io.Writer) (int64, error)) (ocispec.Descriptor, error) {
	dir := filepath.Join(w.dir, "blobs", "sha256")
	f, err := os.CreateTemp(dir, ".blob-*")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer func() {
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	dg := digest.SHA256.Digester()
	size, err := write(f, dg.Hash())
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := f.Sync(); err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: mediaType, Digest: dg.Digest(), Size: size}
	path := filepath.Join(dir, d.Digest.Encoded())
	if _, err := os.Stat(path); err == nil {
		return d, nil // the same bytes are already stored
	}
	if err := f.Chmod(0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := f.Close(); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return ocispec.Descriptor{}, err
	}
	f = nil
	w.bytes.Add(d.Size)
	return d, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
