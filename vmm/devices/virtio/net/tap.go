package net

import (
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// ifNameMax is the longest interface name Linux takes: IFNAMSIZ less its
// NUL.
const ifNameMax = unix.IFNAMSIZ - 1

// Tap is a Linux tap interface as a Link: frames with a virtio-net header
// in front (IFF_VNET_HDR, header size 12), so that the header the guest
// wrote reaches the host's network stack, offloads and all, and the
// host's reaches the guest unchanged.
type Tap struct {
	*packetFile
	name string
}

var _ OffloadLink = (*Tap)(nil)

// OpenTap attaches to the tap interface name, creating it if it does not
// exist and the process may (CAP_NET_ADMIN); a persistent tap made for
// the process's user can be opened without privileges. The tap is opened
// non-blocking and close-on-exec, without the packet-information prefix,
// with a 12-byte virtio-net header on every packet and no receive
// offloads until the device is started (SetOffloads). Bringing the
// interface up and connecting it (address, bridge, routes) is the
// caller's business.
func OpenTap(name string) (*Tap, error) {
	if err := validIfName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: tap %s: open /dev/net/tun: %w", name, err)
	}
	fail := func(what string, err error) (*Tap, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("virtio-net: tap %s: %s: %w", name, what, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fail("name", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fail("TUNSETIFF", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderSize); err != nil {
		return fail("TUNSETVNETHDRSZ", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return fail("TUNSETOFFLOAD", err)
	}
	pf, err := newPacketFile(fd, "tap "+ifr.Name())
	if err != nil {
		return nil, err
	}
	return &Tap{packetFile: pf, name: ifr.Name()}, nil
}

// validIfName checks a name as Linux's dev_valid_name does, so that a bad
// one gets a clear error rather than EINVAL from an ioctl.
func validIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("virtio-net: no tap name")
	case len(name) > ifNameMax:
		return fmt.Errorf("virtio-net: tap name %q is %d bytes, more than %d", name, len(name), ifNameMax)
	case name == "." || name == "..":
		return fmt.Errorf("virtio-net: tap name %q", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r\x00"):
		return fmt.Errorf("virtio-net: tap name %q has a slash, colon, space or NUL", name)
	}
	return nil
}

// Name returns the interface's name.
func (t *Tap) Name() string { return t.name }

// SetOffloads implements OffloadLink: the tap's TUNSETOFFLOAD flags.
// Segmentation offloads need the checksum one (the kernel refuses them
// alone), so they are only set with it.
func (t *Tap) SetOffloads(o Offloads) error {
	flags := 0
	if o.Checksum {
		flags |= unix.TUN_F_CSUM
		if o.TSO4 {
			flags |= unix.TUN_F_TSO4
		}
		if o.TSO6 {
			flags |= unix.TUN_F_TSO6
		}
	}
	var ioErr error
	err := t.rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags)
	})
	if err == nil {
		err = ioErr
	}
	if err != nil {
		return fmt.Errorf("virtio-net: tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	return nil
}

// OpenTapIn opens the tap name inside the network namespace at nsPath (a
// file such as /run/netns/NAME or /proc/PID/ns/net), so that a guest's
// NIC joins that namespace's network while the VMM itself stays in its
// own. A tap belongs to the namespace it was attached from, and its file
// descriptor works from any thread afterwards. The attach runs on a
// thread of its own, which is discarded afterwards rather than returned to
// the Go runtime in the other namespace.
func OpenTapIn(nsPath, name string) (*Tap, error) {
	ns, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: network namespace %s: %w", nsPath, err)
	}
	defer unix.Close(ns)
	type result struct {
		tap *Tap
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, so no other
		// goroutine ever runs in the namespace it entered.
		runtime.LockOSThread()
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("virtio-net: enter network namespace %s: %w", nsPath, err)}
			return
		}
		t, err := OpenTap(name)
		ch <- result{t, err}
	}()
	r := <-ch
	return r.tap, r.err
}
