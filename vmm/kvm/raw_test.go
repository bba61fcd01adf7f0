package kvm

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// seqpacketPair returns two ends of a non-blocking SOCK_SEQPACKET pair,
// which keep each write a packet of its own, as a tap does.
func seqpacketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// TestRawWritevRead: a gather write arrives as one packet holding the
// buffers in order, empty buffers skipped; a read of an empty socket says
// EAGAIN, and a short buffer truncates the packet as read(2) does.
func TestRawWritevRead(t *testing.T) {
	tests := []struct {
		name string
		bufs [][]byte
		read int // read buffer size
		want string
	}{
		{"one buffer", [][]byte{[]byte("hello")}, 64, "hello"},
		{"gathered in order", [][]byte{[]byte("ab"), []byte("cd"), []byte("e")}, 64, "abcde"},
		{"empty buffers skipped", [][]byte{nil, []byte("ab"), {}, []byte("c"), nil}, 64, "abc"},
		{"truncated read", [][]byte{[]byte("abcdef")}, 3, "abc"},
		{"guest-sized packet", [][]byte{bytes.Repeat([]byte{1}, 12), bytes.Repeat([]byte{2}, 65000)}, 70000, string(bytes.Repeat([]byte{1}, 12)) + string(bytes.Repeat([]byte{2}, 65000))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := seqpacketPair(t)
			total := 0
			for _, x := range tc.bufs {
				total += len(x)
			}
			n, err := RawWritev(a, tc.bufs)
			if err != nil || n != total {
				t.Fatalf("RawWritev = %d, %v; want %d, nil", n, err, total)
			}
			buf := make([]byte, tc.read)
			n, err = RawRead(b, buf)
			if err != nil || string(buf[:n]) != tc.want {
				t.Fatalf("RawRead = %d bytes %.20q, %v; want %d bytes %.20q", n, buf[:n], err, len(tc.want), tc.want)
			}
			if n, err := RawRead(b, buf); !errors.Is(err, unix.EAGAIN) {
				t.Errorf("RawRead of an empty socket = %d, %v; want EAGAIN", n, err)
			}
		})
	}
}

// TestRawEmpty: nothing to write or read is no system call and no error,
// and a closed descriptor is an error, not a panic.
func TestRawEmpty(t *testing.T) {
	a, _ := seqpacketPair(t)
	if n, err := RawWritev(a, [][]byte{nil, {}}); n != 0 || err != nil {
		t.Errorf("RawWritev of empty buffers = %d, %v", n, err)
	}
	if n, err := RawRead(a, nil); n != 0 || err != nil {
		t.Errorf("RawRead into nothing = %d, %v", n, err)
	}
	if _, err := RawRead(-1, make([]byte, 8)); !errors.Is(err, unix.EBADF) {
		t.Errorf("RawRead of fd -1: %v, want EBADF", err)
	}
	if _, err := RawWritev(-1, [][]byte{[]byte("x")}); !errors.Is(err, unix.EBADF) {
		t.Errorf("RawWritev to fd -1: %v, want EBADF", err)
	}
}
