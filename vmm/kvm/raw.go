package kvm

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// ReadPolled reads from the non-blocking descriptor behind rc into b:
// raw reads (RawRead), and on EAGAIN a wait in Go's poller, so that a
// deadline or Close ends a blocked read. Its error is the poller's (a
// deadline passed, the file closed) or read(2)'s.
func ReadPolled(rc syscall.RawConn, b []byte) (int, error) {
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		n, rerr = RawRead(int(fd), b)
		return rerr != unix.EAGAIN // on EAGAIN, wait in the poller
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}
