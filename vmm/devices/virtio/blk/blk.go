// Package blk is a virtio-blk device (virtio 1.x, 5.2) backed by a raw
// disk image: a regular file or a block device, sector n of the disk at
// byte 512n of the file. It is a virtio.Backend for the PCI transport.
//
// # Hostile chains
//
// Every request is written by the guest and treated as hostile. The
// device makes no assumption about how the driver laid a request out in
// descriptors: any layout is legal in virtio 1.x, so the device-readable
// buffers are read as one byte stream (the 16-byte header, then the data
// of a write or the segments of a discard) and the device-writable buffers
// as another (the data of a read or an ID, then the status in the very
// last byte). The header and discard segments are copied out of guest
// memory before they are checked, so that a vCPU racing on them cannot
// change a request between its check and its use. A chain too short to
// carry a header or a status byte cannot be answered and is a broken
// chain (virtio.ErrBadChain), which puts the device into its needs-reset
// state. Every other malformed request is answered with an error status:
// sector ranges are checked for overflow and against the capacity before
// any I/O, so no request can read or write outside the disk or grow the
// image; data lengths must be whole sectors; discard and write-zeroes
// requests are bounded in segments and sectors and all their segments are
// checked before any is applied.
//
// # Data path
//
// Reads and writes go straight between the image and guest memory with
// preadv and pwritev on the buffers of the chain, without a copy, in
// batches of at most IOV_MAX buffers and looping over short transfers.
//
// # Durability
//
// Writes reach the host's page cache (the device is a write-back cache,
// and offers VIRTIO_BLK_F_FLUSH so that the guest knows it). A flush
// request is answered OK only after fdatasync of the image succeeded, so
// nothing the guest was told is flushed can be lost to a host crash. When
// fdatasync fails the kernel may already have dropped the dirty pages
// that did not reach the disk, and a later fdatasync may succeed without
// them: the device therefore answers every later flush with an I/O error,
// until it is recreated, rather than acknowledge writes that may be lost.
package blk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

const (
	// SectorSize is the size of a virtio-blk sector, and of the blocks
	// the device reports (blk_size).
	SectorSize = 512
	// QueueSize is the size of the device's single request queue.
	QueueSize = 256
	// IDLen is the size of the answer to a GET_ID request: the ID,
	// NUL-padded. An Options.ID may be at most this long.
	IDLen = 20
)

// Feature bits (virtio 1.x, 5.2.3).
const (
	featSegMax      = 1 << 2
	featRO          = 1 << 5
	featBlkSize     = 1 << 6
	featFlush       = 1 << 9
	featDiscard     = 1 << 13
	featWriteZeroes = 1 << 14
)

// Limits offered in the device configuration.
const (
	// segMax is the most data buffers in a request: without indirect
	// descriptors a request also needs one for its header and one for
	// its status, and must fit in the queue.
	segMax = QueueSize - 2
	// Discard is cheap (a hole punched in the image); write-zeroes may
	// fall back to writing zeros, on the vCPU thread, so it is bounded
	// more tightly.
	maxDiscardSectors     = 1 << 22 // 2 GiB
	maxDiscardSeg         = 256
	discardAlignment      = 8       // sectors: 4 KiB, the usual file system block
	maxWriteZeroesSectors = 1 << 16 // 32 MiB
	maxWriteZeroesSeg     = 16
)

// Offsets in struct virtio_blk_config.
const (
	cfgCapacity          = 0
	cfgSizeMax           = 8
	cfgSegMax            = 12
	cfgGeometry          = 16
	cfgBlkSize           = 20
	cfgTopology          = 24
	cfgWriteback         = 32
	cfgNumQueues         = 34
	cfgMaxDiscardSectors = 36
	cfgMaxDiscardSeg     = 40
	cfgDiscardAlignment  = 44
	cfgMaxWZSectors      = 48
	cfgMaxWZSeg          = 52
	cfgWZMayUnmap        = 56
	configSize           = 60 // through write_zeroes_may_unmap and its padding
)

// Options configure a Device.
type Options struct {
	// ReadOnly offers VIRTIO_BLK_F_RO and answers every write, discard
	// and write-zeroes request with an I/O error. The image may then be
	// opened read-only.
	ReadOnly bool
	// ID is the disk's serial number, the answer to GET_ID: at most
	// IDLen bytes of UTF-8, without NUL bytes. It may be empty.
	ID string
	// Log, if set, receives the errors of I/O on the image; the guest
	// sees them as VIRTIO_BLK_S_IOERR.
	Log func(error)
}

// Device is a virtio-blk backend on a raw image. Its methods are called
// by the virtio transport, which serialises Notify and Reset with each
// other; ReadConfig and Features may run concurrently with them.
type Device struct {
	f        *os.File
	fd       int
	name     string
	capacity uint64 // in sectors
	readOnly bool
	id       string
	log      func(error)
	config   [configSize]byte

	// The rest is used by Notify only.

	// flushFailed is set once fdatasync failed: see the package doc.
	flushFailed bool
	// noPunch and noZeroRange remember that the file system refused a
	// fallocate mode, so that it is not asked again.
	noPunch, noZeroRange bool
	iov                  [][]byte // scratch for the data buffers of a request
	seg                  []byte   // scratch for discard and write-zeroes segments
}

var (
	_ virtio.Backend  = (*Device)(nil)
	_ virtio.Stateful = (*Device)(nil)
)

// New returns a device for the raw image f, a regular file or a block
// device whose size is a non-zero multiple of SectorSize. Unless
// opt.ReadOnly, f must be open for writing (and not in append mode).
//
// The device does not take ownership of f: the caller must keep it open
// while the device is in use, and may close it either itself or with the
// device's Close.
func New(f *os.File, opt Options) (*Device, error) {
	name := f.Name()
	if len(opt.ID) > IDLen {
		return nil, fmt.Errorf("virtio-blk %s: ID %q is %d bytes, more than %d", name, opt.ID, len(opt.ID), IDLen)
	}
	if !utf8.ValidString(opt.ID) || strings.IndexByte(opt.ID, 0) >= 0 {
		return nil, fmt.Errorf("virtio-blk %s: ID %q is not UTF-8 without NUL bytes", name, opt.ID)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	var size int64
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		size = fi.Size()
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		// A block device: Stat reports no size, its end does.
		cur, err := f.Seek(0, io.SeekCurrent)
		if err == nil {
			size, err = f.Seek(0, io.SeekEnd)
		}
		if err == nil {
			_, err = f.Seek(cur, io.SeekStart)
		}
		if err != nil {
			return nil, fmt.Errorf("virtio-blk: size of block device %s: %w", name, err)
		}
	default:
		return nil, fmt.Errorf("virtio-blk: %s is neither a regular file nor a block device (%v)", name, mode)
	}
	if size <= 0 || size%SectorSize != 0 {
		return nil, fmt.Errorf("virtio-blk: image %s is %d bytes, not a non-zero multiple of the %d-byte sector", name, size, SectorSize)
	}
	fd := int(f.Fd())
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: flags of %s: %w", name, err)
	}
	if !opt.ReadOnly {
		if flags&unix.O_ACCMODE == unix.O_RDONLY {
			return nil, fmt.Errorf("virtio-blk: image %s is open read-only but the disk is not read-only", name)
		}
		if flags&unix.O_APPEND != 0 {
			// Linux's pwrite appends to such a file, whatever the offset.
			return nil, fmt.Errorf("virtio-blk: image %s is open in append mode", name)
		}
	}
	d := &Device{f: f, fd: fd, name: name, capacity: uint64(size) / SectorSize, readOnly: opt.ReadOnly, id: opt.ID, log: opt.Log}
	d.fillConfig()
	return d, nil
}

func (d *Device) fillConfig() {
	c := d.config[:]
	le := binary.LittleEndian
	le.PutUint64(c[cfgCapacity:], d.capacity)
	le.PutUint32(c[cfgSegMax:], segMax)
	le.PutUint32(c[cfgBlkSize:], SectorSize)
	c[cfgWriteback] = 1 // informative: without CONFIG_WCE, FLUSH means write-back
	le.PutUint16(c[cfgNumQueues:], 1)
	if !d.readOnly {
		le.PutUint32(c[cfgMaxDiscardSectors:], maxDiscardSectors)
		le.PutUint32(c[cfgMaxDiscardSeg:], maxDiscardSeg)
		le.PutUint32(c[cfgDiscardAlignment:], discardAlignment)
		le.PutUint32(c[cfgMaxWZSectors:], maxWriteZeroesSectors)
		le.PutUint32(c[cfgMaxWZSeg:], maxWriteZeroesSeg)
		c[cfgWZMayUnmap] = 1
	}
}

// Capacity returns the size of the disk in sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// ReadOnly reports whether the disk is read-only.
func (d *Device) ReadOnly() bool { return d.readOnly }

// Close closes the image file. Call it only once the device is no longer
// in use, and only if the caller does not close the file itself.
func (d *Device) Close() error { return d.f.Close() }

// Type is virtio's block device ID.
func (d *Device) Type() uint16 { return virtio.TypeBlock }

// Features returns the device-specific features offered: SEG_MAX,
// BLK_SIZE and FLUSH, then RO for a read-only disk, DISCARD and
// WRITE_ZEROES for a writable one.
func (d *Device) Features() uint64 {
	f := uint64(featSegMax | featBlkSize | featFlush)
	if d.readOnly {
		return f | featRO
	}
	return f | featDiscard | featWriteZeroes
}

// QueueSizes returns the size of the one request queue.
func (d *Device) QueueSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig serves the device configuration (struct virtio_blk_config,
// little endian) at any offset and size; bytes past it read as 0.
func (d *Device) ReadConfig(off uint64, data []byte) {
	clear(data)
	if off < uint64(len(d.config)) {
		copy(data, d.config[off:])
	}
}

// WriteConfig ignores the write: the device offers no writable field
// (VIRTIO_BLK_F_CONFIG_WCE is not offered).
func (d *Device) WriteConfig(uint64, []byte) {}

// Reset has nothing to do: requests complete within Notify. A failed
// flush is not forgotten (see the package doc).
func (d *Device) Reset() {}

// savedState is the device's part of a snapshot: what identifies the
// disk to the guest.
type savedState struct {
	Capacity uint64 `json:"capacity"`
	ReadOnly bool   `json:"read_only"`
	ID       string `json:"id"`
}

// SaveState returns the disk's capacity, read-only flag and ID, for
// RestoreState to check that the snapshot is restored onto the same disk.
func (d *Device) SaveState() (json.RawMessage, error) {
	return json.Marshal(savedState{Capacity: d.capacity, ReadOnly: d.readOnly, ID: d.id})
}

// RestoreState checks a state saved by SaveState against this device: a
// guest restored onto a disk of another capacity, writability or ID would
// see it change under its feet, so that is an error.
func (d *Device) RestoreState(b json.RawMessage) error {
	if len(b) == 0 {
		return fmt.Errorf("virtio-blk %s: the snapshot has no disk state", d.name)
	}
	var s savedState
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("virtio-blk %s: saved disk state: %w", d.name, err)
	}
	var errs []error
	if s.Capacity != d.capacity {
		errs = append(errs, fmt.Errorf("the snapshot's disk has %d sectors, %s has %d", s.Capacity, d.name, d.capacity))
	}
	if s.ReadOnly != d.readOnly {
		errs = append(errs, fmt.Errorf("the snapshot's disk is read-only=%t, %s is read-only=%t", s.ReadOnly, d.name, d.readOnly))
	}
	if s.ID != d.id {
		errs = append(errs, fmt.Errorf("the snapshot's disk has ID %q, %s has %q", s.ID, d.name, d.id))
	}
	if len(errs) != 0 {
		return fmt.Errorf("virtio-blk: not the disk that was captured: %w", errors.Join(errs...))
	}
	return nil
}
