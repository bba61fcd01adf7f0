package snapshots

import (
	"bytes"
	"fmt"
	"io"
	"math/bits"
)

var zeroPage [PageSize]byte

// isZero reports whether a page is all zero.
func isZero(p []byte) bool { return bytes.Equal(p, zeroPage[:]) }

// scanChunk returns the number of non-zero pages in data, a chunk.
func scanChunk(data []byte) uint64 {
	var n uint64
	for off := 0; off < len(data); off += PageSize {
		if !isZero(data[off : off+PageSize]) {
			n++
		}
	}
	return n
}

// writeChunk writes a chunk's layer to w in the encoding c has: raw, the
// chunk's bytes; or sparse, a one-page header holding a bitmap with bit i
// (bit i%8 of byte i/8) set for each stored page i, the rest of the page
// zero, followed by the stored pages in order. Pages past the chunk's end
// have their bits clear. The header keeps every stored page page-aligned
// in the blob, so that it can be mapped into guest memory.
func writeChunk(w io.Writer, c Chunk, data []byte) error {
	if c.encoding() == MediaTypeMemoryRaw {
		_, err := w.Write(data)
		return err
	}
	bitmap := make([]byte, PageSize)
	for i := uint64(0); i < c.Size/PageSize; i++ {
		if !isZero(data[i*PageSize : (i+1)*PageSize]) {
			bitmap[i/8] |= 1 << (i % 8)
		}
	}
	if _, err := w.Write(bitmap); err != nil {
		return err
	}
	for i := uint64(0); i < c.Size/PageSize; i++ {
		if bitmap[i/8]&(1<<(i%8)) != 0 {
			if _, err := w.Write(data[i*PageSize : (i+1)*PageSize]); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkBitmap checks a sparse chunk's header against the chunk: its
// bitmap must mark exactly c.Pages pages, none past the chunk's end, and
// the rest of the header must be zero.
func checkBitmap(c Chunk, header []byte) error {
	if len(header) != PageSize {
		return fmt.Errorf("%w: sparse chunk header of %d bytes, want %d", ErrMalformed, len(header), PageSize)
	}
	bitmap := header[:bitmapLen(c.Size)]
	for _, b := range header[len(bitmap):] {
		if b != 0 {
			return fmt.Errorf("%w: sparse chunk header has bytes set past its bitmap", ErrMalformed)
		}
	}
	var n uint64
	for _, b := range bitmap {
		n += uint64(bits.OnesCount8(b))
	}
	if n != c.Pages {
		return fmt.Errorf("%w: bitmap marks %d pages, the config says %d", ErrMalformed, n, c.Pages)
	}
	if extra := c.Size / PageSize % 8; extra != 0 && bitmap[len(bitmap)-1]>>extra != 0 {
		return fmt.Errorf("%w: bitmap marks pages past the chunk's end", ErrMalformed)
	}
	return nil
}

// readSparse copies a sparse chunk's pages from r, positioned after the
// bitmap, into dst, the chunk's zero-filled destination.
func readSparse(r io.Reader, bitmap, dst []byte) error {
	for i := 0; i < len(dst)/PageSize; i++ {
		if bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		if _, err := io.ReadFull(r, dst[i*PageSize:(i+1)*PageSize]); err != nil {
			return err
		}
	}
	return nil
}

// runs calls f for each run of consecutive stored pages in a sparse
// chunk's bitmap: the run's first page in the chunk, its first page in the
// blob's page data, and its length in pages.
func runs(bitmap []byte, pages uint64, f func(page, stored, n uint64) error) error {
	var stored uint64
	for i := uint64(0); i < pages; {
		if bitmap[i/8]&(1<<(i%8)) == 0 {
			i++
			continue
		}
		start := i
		for i < pages && bitmap[i/8]&(1<<(i%8)) != 0 {
			i++
		}
		if err := f(start, stored, i-start); err != nil {
			return err
		}
		stored += i - start
	}
	return nil
}
