package snapshots

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"maps"
	"os"
	"path/filepath"
	"slices"
)

// MemRegion is a region of guest memory and its host mapping.
type MemRegion struct {
	GPA  uint64 // guest-physical address, page-aligned
	Data []byte // host mapping; its length is the region's size, a multiple of PageSize
}

// Writer writes an artifact. It writes to a temporary file in the
// destination's directory and renames it into place in [Writer.Commit]. After
// any error the Writer removes the temporary file and every later call returns
// that error; [Writer.Abort] discards an unfinished artifact.
//
// A Writer is not safe for concurrent use.
type Writer struct {
	path, tmp string
	f         *os.File
	bw        *bufio.Writer
	off       uint64 // file offset of the next byte written through bw
	md        Metadata
	blobs     []BlobInfo
	names     map[string]bool
	mem       *MemoryInfo
	err       error // sticky
}

var errClosed = errors.New("writer already committed or aborted")

// Create starts writing an artifact to path with the VM's metadata md. The
// artifact is created with mode 0600, since guest memory may hold secrets.
func Create(path string, md Metadata) (*Writer, error) {
	md.Created = md.Created.UTC()
	md.Labels = maps.Clone(md.Labels)
	if err := md.validate(); err != nil {
		return nil, fmt.Errorf("create artifact %s: metadata: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create artifact %s: %w", path, err)
	}
	w := &Writer{
		path:  path,
		tmp:   f.Name(),
		f:     f,
		bw:    bufio.NewWriterSize(f, 1<<20),
		md:    md,
		names: make(map[string]bool),
	}
	// The header is written last, at offset 0; reserve its space.
	if err := w.write(make([]byte, headerSize), nil); err != nil {
		return nil, w.fail(err)
	}
	return w, nil
}

// fail records err, removes the temporary file and returns err prefixed
// with the artifact's name.
func (w *Writer) fail(err error) error {
	w.err = fmt.Errorf("write artifact %s: %w", w.path, err)
	w.discard()
	return w.err
}

func (w *Writer) discard() {
	if w.f != nil {
		w.f.Close()
		os.Remove(w.tmp)
		w.f = nil
	}
}

// Abort discards the artifact. It is a no-op after Commit or a failure.
func (w *Writer) Abort() {
	if w.err == nil {
		w.err = fmt.Errorf("write artifact %s: %w", w.path, errClosed)
	}
	w.discard()
}

// write appends p to the file, hashing it into h if h is not nil.
func (w *Writer) write(p []byte, h hash.Hash) error {
	if h != nil {
		h.Write(p)
	}
	n, err := w.bw.Write(p)
	w.off += uint64(n)
	return err
}

// pad appends zero bytes up to the next multiple of align.
func (w *Writer) pad(align uint64) error {
	var zero [PageSize]byte
	n := (align - w.off%align) % align
	return w.write(zero[:n], nil)
}

// AddBlob adds a blob of at most [MaxBlobSize] bytes. Names follow
// [ValidName]; "memory" and names under "memory/" are reserved for
// [Writer.AddMemory].
func (w *Writer) AddBlob(name string, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if err := ValidName(name); err != nil {
		return w.fail(fmt.Errorf("blob: %w", err))
	}
	if reservedName(name) {
		return w.fail(fmt.Errorf("blob %q: name reserved for guest memory; use AddMemory", name))
	}
	if len(data) > MaxBlobSize {
		return w.fail(fmt.Errorf("blob %q: %w: %d bytes, over %d", name, ErrLimit, len(data), MaxBlobSize))
	}
	if err := w.addBlob(name, data); err != nil {
		return w.fail(err)
	}
	return nil
}

func (w *Writer) addBlob(name string, data []byte) error {
	if w.names[name] {
		return fmt.Errorf("blob %q: added twice", name)
	}
	if len(w.blobs) >= MaxBlobs {
		return fmt.Errorf("blob %q: %w: more than %d blobs", name, ErrLimit, MaxBlobs)
	}
	off := w.off
	h := sha256.New()
	if err := w.write(data, h); err != nil {
		return fmt.Errorf("blob %q: %w", name, err)
	}
	w.names[name] = true
	w.blobs = append(w.blobs, BlobInfo{Name: name, Offset: off, Size: uint64(len(data)), SHA256: Digest(h.Sum(nil))})
	return nil
}

// AddMemory adds guest memory, at most once. It reads the regions' host
// mappings once, page by page, and stores only the pages that are not all
// zero, streaming them to the file; the mappings must not change until it
// returns.
func (w *Writer) AddMemory(regions []MemRegion) error {
	if w.err != nil {
		return w.err
	}
	if err := w.addMemory(regions); err != nil {
		return w.fail(fmt.Errorf("memory: %w", err))
	}
	return nil
}

func (w *Writer) addMemory(regions []MemRegion) error {
	if w.mem != nil {
		return errors.New("added twice")
	}
	if len(w.blobs)+2 > MaxBlobs {
		return fmt.Errorf("%w: more than %d blobs", ErrLimit, MaxBlobs)
	}
	regions = slices.Clone(regions)
	slices.SortFunc(regions, func(a, b MemRegion) int { return cmp.Compare(a.GPA, b.GPA) })
	mem := &MemoryInfo{PageSize: PageSize}
	for _, r := range regions {
		mem.Regions = append(mem.Regions, Region{GPA: r.GPA, Size: uint64(len(r.Data))})
	}
	if err := mem.validate(); err != nil {
		return err
	}

	// Page data first, page-aligned in the file, then the extent table,
	// which is known only at the end.
	if err := w.pad(PageSize); err != nil {
		return err
	}
	dataOff := w.off
	h := sha256.New()
	var table []byte
	zero := make([]byte, PageSize)
	for _, r := range regions {
		start := -1 // start of the current run of non-zero pages, or -1
		flush := func(end int) error {
			if len(table)/extentSize >= MaxExtents {
				return fmt.Errorf("%w: more than %d runs of non-zero pages", ErrLimit, MaxExtents)
			}
			table = binary.LittleEndian.AppendUint64(table, r.GPA+uint64(start))
			table = binary.LittleEndian.AppendUint64(table, uint64(end-start))
			return w.write(r.Data[start:end], h)
		}
		for p := 0; p < len(r.Data); p += PageSize {
			nonzero := !bytes.Equal(r.Data[p:p+PageSize], zero)
			switch {
			case nonzero && start < 0:
				start = p
			case !nonzero && start >= 0:
				if err := flush(p); err != nil {
					return err
				}
				start = -1
			}
		}
		if start >= 0 {
			if err := flush(len(r.Data)); err != nil {
				return err
			}
		}
	}
	w.blobs = append(w.blobs, BlobInfo{Name: MemoryBlob, Offset: dataOff, Size: w.off - dataOff, SHA256: Digest(h.Sum(nil))})
	w.names[MemoryBlob] = true
	if err := w.addBlob(MemoryExtentsBlob, table); err != nil {
		return err
	}
	w.mem = mem
	return nil
}

// Commit signs the manifest with key, writes it, syncs the file and renames
// it to the path given to [Create], replacing any file there. On error
// nothing is left behind.
func (w *Writer) Commit(key ed25519.PrivateKey) error {
	if w.err != nil {
		return w.err
	}
	if err := w.commit(key); err != nil {
		return w.fail(err)
	}
	w.f = nil
	w.err = fmt.Errorf("write artifact %s: %w", w.path, errClosed)
	return nil
}

func (w *Writer) commit(key ed25519.PrivateKey) error {
	if len(key) != ed25519.PrivateKeySize {
		return fmt.Errorf("private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	m := Manifest{
		Format:   FormatName,
		Version:  Version{MajorVersion, MinorVersion},
		Metadata: w.md,
		Memory:   w.mem,
		Blobs:    slices.SortedFunc(slices.Values(w.blobs), func(a, b BlobInfo) int { return cmp.Compare(a.Name, b.Name) }),
	}
	mb, err := encodeManifest(&m)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	if len(mb) > MaxManifestSize {
		return fmt.Errorf("manifest: %w: %d bytes, over %d", ErrLimit, len(mb), MaxManifestSize)
	}
	// Check that readers will accept what is signed.
	if _, err := decodeManifest(mb); err != nil {
		return fmt.Errorf("manifest does not decode: %w", err)
	}
	sig, err := Sign(key, mb)
	if err != nil {
		return err
	}
	hdr := header{major: MajorVersion, minor: MinorVersion, manifestOff: w.off, manifestSize: uint64(len(mb))}
	if err := w.write(mb, nil); err != nil {
		return err
	}
	hdr.signatureOff, hdr.signatureSize = w.off, uint64(len(sig))
	if err := w.write(sig, nil); err != nil {
		return err
	}
	hdr.fileSize = w.off
	if err := w.bw.Flush(); err != nil {
		return err
	}
	if _, err := w.f.WriteAt(hdr.marshal(), 0); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		w.f = nil
		os.Remove(w.tmp)
		return err
	}
	w.f = nil
	if err := os.Rename(w.tmp, w.path); err != nil {
		os.Remove(w.tmp)
		return err
	}
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		os.Remove(w.path)
		return err
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
