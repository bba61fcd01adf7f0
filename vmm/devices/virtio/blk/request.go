package blk

import (
	"encoding/binary"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// Request types (virtio 1.x, 5.2.6).
const (
	typeIn          = 0
	typeOut         = 1
	typeFlush       = 4
	typeGetID       = 8
	typeDiscard     = 11
	typeWriteZeroes = 13
)

// Request status.
const (
	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2
)

const (
	headerSize = 16 // struct virtio_blk_req: type u32, reserved u32, sector u64
	segSize    = 16 // struct virtio_blk_discard_write_zeroes
	flagUnmap  = 1  // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
)

// Notify serves every request the driver made available on the queue. A
// chain that cannot be answered (no room for the status byte, or less
// than a header to read) is an error wrapping virtio.ErrBadChain, and is
// not returned to the driver; requests before it were answered.
func (d *Device) Notify(_ int, queues []*virtio.Queue) error {
	q := queues[0]
	for {
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		written, err := d.serve(c)
		if err != nil {
			return err
		}
		q.Push(c, written)
	}
}

// serve answers one request and returns the used length.
func (d *Device) serve(c *virtio.Chain) (uint32, error) {
	k := 0
	for k < len(c.Buffers) && !c.Buffers[k].Write {
		k++
	}
	rd, wr := c.Buffers[:k], c.Buffers[k:]
	rlen, wlen := streamLen(rd), streamLen(wr)
	if wlen == 0 {
		return 0, fmt.Errorf("%w: virtio-blk request %d has no device-writable byte for its status", virtio.ErrBadChain, c.Head)
	}
	if rlen < headerSize {
		return 0, fmt.Errorf("%w: virtio-blk request %d has %d device-readable bytes, less than a %d-byte header", virtio.ErrBadChain, c.Head, rlen, headerSize)
	}
	var hdr [headerSize]byte
	copyFrom(rd, 0, hdr[:])
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	data := wlen - 1 // the writable bytes before the status

	status, written := byte(statusUnsupp), int64(0)
	switch typ {
	case typeIn:
		written, status = d.read(sector, wr, data)
	case typeOut:
		status = d.write(sector, rd, rlen)
	case typeFlush:
		status = d.flush()
	case typeGetID:
		var id [IDLen]byte
		copy(id[:], d.id)
		written = int64(copyTo(wr, 0, id[:min(int64(IDLen), data)]))
		status = statusOK
	case typeDiscard, typeWriteZeroes:
		status = d.zero(typ, rd, rlen)
	}
	setStatus(wr, status)
	return uint32(written + 1), nil
}

// span checks that n bytes from sector are whole sectors inside the disk,
// and returns their offset in the image.
func (d *Device) span(sector uint64, n int64) (int64, bool) {
	if n < 0 || n%SectorSize != 0 {
		return 0, false
	}
	sectors := uint64(n) / SectorSize
	if sector > d.capacity || sectors > d.capacity-sector {
		return 0, false
	}
	// The capacity came from an int64 byte size: this cannot overflow.
	return int64(sector * SectorSize), true
}

// read serves an IN request into the first n bytes of the writable
// buffers, returning the bytes read and the status.
func (d *Device) read(sector uint64, wr []virtio.Buffer, n int64) (int64, byte) {
	off, ok := d.span(sector, n)
	if !ok {
		return 0, statusIOErr
	}
	iov := appendRange(d.iov[:0], wr, 0, n)
	done, err := d.readAt(iov, off)
	d.release(iov)
	if err != nil {
		d.logf("read of %d bytes at sector %d: %w", n, sector, err)
		return done, statusIOErr
	}
	return n, statusOK
}

// write serves an OUT request, whose data are the readable bytes after
// the header.
func (d *Device) write(sector uint64, rd []virtio.Buffer, rlen int64) byte {
	if d.readOnly {
		return statusIOErr
	}
	n := rlen - headerSize
	off, ok := d.span(sector, n)
	if !ok {
		return statusIOErr
	}
	iov := appendRange(d.iov[:0], rd, headerSize, rlen)
	_, err := d.writeAt(iov, off)
	d.release(iov)
	if err != nil {
		d.logf("write of %d bytes at sector %d: %w", n, sector, err)
		return statusIOErr
	}
	return statusOK
}

// flush makes every write so far durable. A read-only device wrote
// nothing, and has nothing to flush.
func (d *Device) flush() byte {
	if d.readOnly {
		return statusOK
	}
	if d.flushFailed {
		return statusIOErr
	}
	if err := d.sync(); err != nil {
		d.flushFailed = true
		d.logf("flush: %w; every later flush fails, as writes may have been lost", err)
		return statusIOErr
	}
	return statusOK
}

// zero serves DISCARD and WRITE_ZEROES requests: every segment is checked
// before any is applied.
func (d *Device) zero(typ uint32, rd []virtio.Buffer, rlen int64) byte {
	if d.readOnly {
		return statusIOErr
	}
	maxSeg, maxSectors, flags := int64(maxDiscardSeg), uint64(maxDiscardSectors), uint32(0)
	if typ == typeWriteZeroes {
		maxSeg, maxSectors, flags = maxWriteZeroesSeg, maxWriteZeroesSectors, flagUnmap
	}
	n := rlen - headerSize
	if n == 0 || n%segSize != 0 {
		return statusIOErr
	}
	if n/segSize > maxSeg {
		return statusUnsupp
	}
	if int64(cap(d.seg)) < n {
		d.seg = make([]byte, maxDiscardSeg*segSize)
	}
	segs := d.seg[:n]
	copyFrom(rd, headerSize, segs)
	// Unknown flags, and unmap on a discard, are unsupported.
	for s := segs; len(s) > 0; s = s[segSize:] {
		if binary.LittleEndian.Uint32(s[12:])&^flags != 0 {
			return statusUnsupp
		}
	}
	for s := segs; len(s) > 0; s = s[segSize:] {
		sector, num := binary.LittleEndian.Uint64(s), uint64(binary.LittleEndian.Uint32(s[8:]))
		if num > maxSectors {
			return statusIOErr
		}
		if _, ok := d.span(sector, int64(num)*SectorSize); !ok {
			return statusIOErr
		}
	}
	for s := segs; len(s) > 0; s = s[segSize:] {
		sector, num := binary.LittleEndian.Uint64(s), int64(binary.LittleEndian.Uint32(s[8:]))
		if num == 0 {
			continue
		}
		off, n := int64(sector)*SectorSize, num*SectorSize
		var err error
		if typ == typeDiscard {
			err = d.discard(off, n)
		} else {
			err = d.writeZeroes(off, n, binary.LittleEndian.Uint32(s[12:])&flagUnmap != 0)
		}
		if err != nil {
			name := "discard"
			if typ == typeWriteZeroes {
				name = "write-zeroes"
			}
			d.logf("%s of %d sectors at sector %d: %w", name, num, sector, err)
			return statusIOErr
		}
	}
	return statusOK
}

func (d *Device) logf(format string, args ...any) {
	if d.log != nil {
		d.log(fmt.Errorf("virtio-blk %s: "+format, append([]any{d.name}, args...)...))
	}
}

// release clears the scratch vector of its references to guest memory and
// keeps it for the next request.
func (d *Device) release(iov [][]byte) {
	clear(iov[:cap(iov)])
	d.iov = iov[:0]
}

func streamLen(bufs []virtio.Buffer) int64 {
	var n int64
	for _, b := range bufs {
		n += int64(len(b.Data))
	}
	return n
}

// appendRange appends to dst the pieces of the buffers that hold bytes
// [from, to) of their stream, leaving out empty ones.
func appendRange(dst [][]byte, bufs []virtio.Buffer, from, to int64) [][]byte {
	var pos int64
	for _, b := range bufs {
		if pos >= to {
			break
		}
		n := int64(len(b.Data))
		if lo, hi := max(from, pos), min(to, pos+n); lo < hi {
			dst = append(dst, b.Data[lo-pos:hi-pos])
		}
		pos += n
	}
	return dst
}

// copyFrom copies bytes from the buffers' stream at off into dst, and
// returns how many there were.
func copyFrom(bufs []virtio.Buffer, off int64, dst []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(dst) {
			break
		}
		if off >= int64(len(b.Data)) {
			off -= int64(len(b.Data))
			continue
		}
		n += copy(dst[n:], b.Data[off:])
		off = 0
	}
	return n
}

// copyTo copies src into the buffers' stream at off, and returns how many
// bytes it wrote.
func copyTo(bufs []virtio.Buffer, off int64, src []byte) int {
	n := 0
	for _, b := range bufs {
		if n == len(src) {
			break
		}
		if off >= int64(len(b.Data)) {
			off -= int64(len(b.Data))
			continue
		}
		n += copy(b.Data[off:], src[n:])
		off = 0
	}
	return n
}

// setStatus writes the last byte of the writable buffers, which the
// caller checked exist.
func setStatus(wr []virtio.Buffer, status byte) {
	for i := len(wr) - 1; i >= 0; i-- {
		if b := wr[i].Data; len(b) > 0 {
			b[len(b)-1] = status
			return
		}
	}
}
