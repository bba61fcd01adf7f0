package net

import (
	"bytes"
	"errors"
	"fmt"
	stdnet "net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestValidIfName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"tap0", true},
		{"a", true},
		{"fifteen-bytes-x", true},
		{"sixteen-bytes-xx", false},
		{"", false},
		{".", false},
		{"..", false},
		{"tap/0", false},
		{"tap:0", false},
		{"tap 0", false},
		{"tap\x000", false},
		{"tap\n", false},
	} {
		if err := validIfName(tc.name); (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, err := OpenTap("sixteen-bytes-xx"); err == nil || !strings.Contains(err.Error(), "more than 15") {
		t.Errorf("OpenTap of a long name: %v", err)
	}
}

// openTestTap opens a fresh tap, or skips the test if this process may
// not.
func openTestTap(t *testing.T) *Tap {
	t.Helper()
	name := fmt.Sprintf("bbnet%d", os.Getpid()%1000000)
	tap, err := OpenTap(name)
	for _, skip := range []error{unix.EPERM, unix.EACCES, unix.ENOENT, unix.ENODEV, unix.EBUSY} {
		if errors.Is(err, skip) {
			t.Skipf("no tap here: %v", err)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	if tap.Name() != name {
		t.Errorf("tap named %q, want %q", tap.Name(), name)
	}
	return tap
}

// TestTapOpenClose: a tap opens, takes every offload combination, and
// closes; a Close ends a blocked read.
func TestTapOpenClose(t *testing.T) {
	tap := openTestTap(t)
	for _, o := range []Offloads{{}, {Checksum: true}, {true, true, false}, {true, false, true}, {true, true, true}, {false, true, true}} {
		if err := tap.SetOffloads(o); err != nil {
			t.Errorf("SetOffloads(%+v): %v", o, err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := tap.ReadPacket(make([]byte, maxPacket))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	tap.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("a read ended by Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a blocked read")
	}
}

// TestTapRoundTrip: a packet written to the tap arrives at the host's
// stack, seen by a packet socket on the interface, and a frame the host
// sends on the interface is read from the tap behind a virtio-net header.
func TestTapRoundTrip(t *testing.T) {
	tap := openTestTap(t)
	const etherType = 0x88b5 // local experimental
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(tap.Name())
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Skipf("interface flags: %v", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Skipf("bringing the tap up: %v", err)
	}
	ifr, _ = unix.NewIfreq(tap.Name())
	if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
		t.Fatal(err)
	}
	index := int(ifr.Uint32())
	htons := func(v uint16) uint16 { return v<<8 | v>>8 }
	ps, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherType)))
	if err != nil {
		t.Skipf("packet socket: %v", err)
	}
	defer unix.Close(ps)
	if err := unix.Bind(ps, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: index}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptTimeval(ps, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		t.Fatal(err)
	}

	// Guest to host.
	out := packet(200, 1)
	if err := tap.WritePacket(split(out, HeaderSize, 20)); err != nil {
		t.Fatalf("writing to the tap: %v", err)
	}
	buf := make([]byte, maxPacket)
	n, _, err := unix.Recvfrom(ps, buf, 0)
	if err != nil {
		t.Fatalf("the host did not see the packet: %v", err)
	}
	if !bytes.Equal(buf[:n], out[HeaderSize:]) {
		t.Errorf("the host got % x..., want % x...", buf[:min(n, 20)], out[HeaderSize:HeaderSize+20])
	}

	// Host to guest: the tap also sees whatever else the host sends
	// on a new interface (IPv6 router solicitations), so look for ours.
	in := packet(300, 2)[HeaderSize:]
	if err := unix.Sendto(ps, in, 0, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}); err != nil {
		t.Fatalf("sending on the interface: %v", err)
	}
	tap.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := tap.ReadPacket(buf)
		if err != nil {
			t.Fatalf("reading the tap: %v", err)
		}
		if n < HeaderSize+ethHeaderSize || buf[HeaderSize+12] != etherType>>8 || buf[HeaderSize+13] != etherType&0xff {
			continue
		}
		if !bytes.Equal(buf[:HeaderSize], make([]byte, HeaderSize)) {
			t.Errorf("header % x, want zeros (no offloads)", buf[:HeaderSize])
		}
		if !bytes.Equal(buf[HeaderSize:n], in) {
			t.Errorf("the tap got %d bytes of frame, want %d", n-HeaderSize, len(in))
		}
		break
	}
}

// TestOpenTapIn: a tap opened in another network namespace lives there,
// not in the caller's.
func TestOpenTapIn(t *testing.T) {
	nsPath := make(chan string)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread() // the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			nsPath <- "skip: " + err.Error()
			return
		}
		nsPath <- fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		<-release
	}()
	path := <-nsPath
	defer close(release)
	if strings.HasPrefix(path, "skip: ") {
		t.Skip(path)
	}
	const name = "bbnstest0"
	tap, err := OpenTapIn(path, name)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOENT) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	if _, err := stdnet.InterfaceByName(name); err == nil {
		t.Errorf("tap %s appeared in the caller's namespace", name)
	}
	if _, err := OpenTapIn("/nonexistent/ns", name); err == nil {
		t.Error("a missing namespace was entered")
	}
}
