package blk

import (
	"errors"
	"io"

	"golang.org/x/sys/unix"
)

// iovMax is Linux's IOV_MAX: the most buffers one preadv or pwritev
// takes. A chain may hold more (through an indirect table).
const iovMax = 1024

// zeros is the source of the writes of write-zeroes when the file system
// cannot zero a range itself; it is only ever read.
var zeros = make([]byte, 64<<10)

// zeroChunk is the most zeros written by one pwritev.
const zeroChunk = 16 * 64 << 10

// readAt fills iov from the image at off, looping over short reads, and
// returns the bytes read. The iov entries are consumed.
func (d *Device) readAt(iov [][]byte, off int64) (int64, error) {
	var done int64
	for len(iov) > 0 {
		n, err := unix.Preadv(d.fd, iov[:min(len(iov), iovMax)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n <= 0 {
			// The image shrank under the device.
			return done, io.ErrUnexpectedEOF
		}
		done += int64(n)
		off += int64(n)
		iov = advance(iov, n)
	}
	return done, nil
}

// writeAt writes iov to the image at off, looping over short writes, and
// returns the bytes written. The iov entries are consumed.
func (d *Device) writeAt(iov [][]byte, off int64) (int64, error) {
	var done int64
	for len(iov) > 0 {
		n, err := unix.Pwritev(d.fd, iov[:min(len(iov), iovMax)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n <= 0 {
			return done, io.ErrShortWrite
		}
		done += int64(n)
		off += int64(n)
		iov = advance(iov, n)
	}
	return done, nil
}

// advance drops the first n bytes of iov.
func advance(iov [][]byte, n int) [][]byte {
	for n > 0 && len(iov) > 0 {
		if n < len(iov[0]) {
			iov[0] = iov[0][n:]
			return iov
		}
		n -= len(iov[0])
		iov = iov[1:]
	}
	return iov
}

func (d *Device) sync() error {
	for {
		err := unix.Fdatasync(d.fd)
		if err != unix.EINTR {
			return err
		}
	}
}

func (d *Device) fallocate(mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(d.fd, mode, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}

// unsupported reports whether fallocate failed because the file system
// (or block device) does not do that mode.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// discard deallocates [off, off+n) of the image: a hole reads as zeros
// and frees the host's space. Where holes cannot be punched, a discard
// does nothing, as the spec allows.
func (d *Device) discard(off, n int64) error {
	if d.noPunch {
		return nil
	}
	err := d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if unsupported(err) {
		d.noPunch = true
		return nil
	}
	return err
}

// writeZeroes makes [off, off+n) of the image read as zeros: by punching
// a hole if the guest allows unmapping, else by zeroing the range in the
// file system, else by writing zeros.
func (d *Device) writeZeroes(off, n int64, unmap bool) error {
	if unmap && !d.noPunch {
		err := d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if !unsupported(err) {
			return err
		}
		d.noPunch = true
	}
	if !d.noZeroRange {
		err := d.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if !unsupported(err) {
			return err
		}
		d.noZeroRange = true
	}
	return d.writeZeros(off, n)
}

// writeZeros writes n zero bytes at off.
func (d *Device) writeZeros(off, n int64) error {
	for n > 0 {
		chunk := min(n, zeroChunk)
		iov := d.iov[:0]
		for m := chunk; m > 0; {
			k := min(m, int64(len(zeros)))
			iov = append(iov, zeros[:k])
			m -= k
		}
		_, err := d.writeAt(iov, off)
		d.release(iov)
		if err != nil {
			return err
		}
		off += chunk
		n -= chunk
	}
	return nil
}
