package net

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// Link is where the device's packets go and come from: a tap, or in
// tests one end of a socket pair. Every packet crossing a Link, in either
// direction, starts with the 12-byte virtio_net_hdr_v1 (HeaderSize), as
// a tap with IFF_VNET_HDR and a vnet header size of 12 exchanges them.
//
// The device does not own the Link: it never closes it. Whoever attached
// it closes it after Detach (or after the device is discarded).
type Link interface {
	// ReadPacket reads one packet, header and frame, into buf and
	// returns its length. It blocks until a packet arrives, the read
	// deadline passes or the link is closed; the device stops a blocked
	// read with a deadline in the past.
	ReadPacket(buf []byte) (int, error)
	// WritePacket sends one packet gathered from bufs, header and frame,
	// in order. bufs are views of guest memory, valid only during the
	// call: the Link must not keep them. It is called on a vCPU thread
	// and should not block for long.
	WritePacket(bufs [][]byte) error
	// SetReadDeadline bounds ReadPacket, as os.File's does; the zero
	// time means no deadline.
	SetReadDeadline(t time.Time) error
}

// Offloads are the receive offloads the guest accepted: which packets a
// Link may hand the device. Without Checksum every packet must carry a
// complete checksum; without TSO4 or TSO6 it must not be a TCP
// segmentation-offload packet of that family. The device checks what it
// receives against them anyway (see the package doc).
type Offloads struct {
	Checksum bool // VIRTIO_NET_F_GUEST_CSUM
	TSO4     bool // VIRTIO_NET_F_GUEST_TSO4 (with GUEST_CSUM)
	TSO6     bool // VIRTIO_NET_F_GUEST_TSO6 (with GUEST_CSUM)
}

// OffloadLink is a Link that can be told which receive offloads the guest
// accepted, so that it hands the device only packets the guest can take:
// a tap sets its TUNSETOFFLOAD flags. The device calls SetOffloads when
// the driver starts it and when the link is attached to a started device.
type OffloadLink interface {
	Link
	SetOffloads(Offloads) error
}

// iovMax is Linux's IOV_MAX: writev refuses more buffers than this.
const iovMax = 1024

// packetFile is a Link over a file descriptor that carries one packet per
// read and write: a tap, or a SOCK_SEQPACKET or SOCK_DGRAM socket. Reads
// wait in Go's poller, so a deadline or Close ends a blocked read;
// writes are one writev of the packet's buffers, without copying them.
//
// The reads and writes themselves are raw system calls (kvm.ReadPolled,
// kvm.RawWritev): the descriptor is non-blocking, and a system call the
// runtime is told of wakes its sleeping sysmon thread, once per packet
// here, whose polling then interrupts the vCPU threads (README, "Device
// benchmark").
type packetFile struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool // Close was called: a failed read says os.ErrClosed

	// mu guards scratch, the buffer a packet of more than iovMax
	// buffers is gathered into.
	mu      sync.Mutex
	scratch []byte
}

// newPacketFile wraps fd, which must be non-blocking, and takes ownership
// of it.
func newPacketFile(fd int, name string) (*packetFile, error) {
	f := os.NewFile(uintptr(fd), name)
	if f == nil {
		unix.Close(fd)
		return nil, fmt.Errorf("virtio-net: %s: bad file descriptor %d", name, fd)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-net: %s: %w", name, err)
	}
	return &packetFile{f: f, rc: rc}, nil
}

// ReadPacket implements Link. Its errors are os.File.Read's: a
// *os.PathError with os.ErrDeadlineExceeded or os.ErrClosed when a
// deadline or Close ended the wait, io.EOF when a socket's other end
// closed (a read of nothing, which would otherwise repeat at once).
func (p *packetFile) ReadPacket(buf []byte) (int, error) {
	n, err := kvm.ReadPolled(p.rc, buf)
	if err == nil && n == 0 && len(buf) > 0 {
		err = io.EOF // the other end of a socket closed, as os.File says
	}
	if err != nil {
		if p.closed.Load() {
			err = os.ErrClosed // the poller's own "use of closed file"
		}
		return 0, &os.PathError{Op: "read", Path: p.f.Name(), Err: err}
	}
	return n, nil
}

// SetReadDeadline implements Link.
func (p *packetFile) SetReadDeadline(t time.Time) error { return p.f.SetReadDeadline(t) }

// Close closes the file descriptor; a blocked ReadPacket returns.
func (p *packetFile) Close() error {
	p.closed.Store(true)
	return p.f.Close()
}

// errShortWrite is a packet the kernel took only part of.
var errShortWrite = errors.New("short write")

// WritePacket implements Link: one writev, which the kernel takes as one
// packet. It does not wait for the descriptor to become writable: a tap
// never makes a writer wait, and a packet the kernel refuses for now
// (EAGAIN) is lost, as on a busy wire.
func (p *packetFile) WritePacket(bufs [][]byte) error {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if len(bufs) > iovMax {
		// Rare (an indirect table of many tiny buffers): gather.
		p.mu.Lock()
		defer p.mu.Unlock()
		if cap(p.scratch) < total {
			p.scratch = make([]byte, 0, total)
		}
		b := p.scratch[:0]
		for _, x := range bufs {
			b = append(b, x...)
		}
		bufs = [][]byte{b}
	}
	var n int
	var werr error
	err := p.rc.Write(func(fd uintptr) bool {
		n, werr = kvm.RawWritev(int(fd), bufs)
		return true
	})
	switch {
	case err != nil:
		return err
	case werr != nil:
		return werr
	case n != total:
		return fmt.Errorf("%w: %d of %d bytes", errShortWrite, n, total)
	}
	return nil
}
