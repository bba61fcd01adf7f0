// Package guestproto holds what bunkerguest, inside a guest, and the
// pipeline, outside it, agree on.
package guestproto

// ReadyLine is the console line "bunkerguest ready" prints: the guest's
// signal that it has booted, which a recipe's "booted: guest-signal: true"
// waits for. bunkerguest uinit prints it after the guest's facts.
const ReadyLine = "BUNKERGUEST-READY"

// CountParam, on the kernel command line as CountParam=FILE, makes
// bunkerguest uinit start a process that counts up ten times a second into
// FILE: a process whose progress shows across a snapshot.
const CountParam = "bunkerguest.count"

// MountParam, as MountParam=DEV:DIR:TYPE, makes bunkerguest uinit mount
// DEV on DIR before it starts the counter and the disk writer, so that
// a filesystem is mounted when the guest is captured.
const MountParam = "bunkerguest.mount"

// IOParam, as IOParam=FILE, makes bunkerguest uinit start a process that
// writes numbered records into FILE fifty times a second, each made
// durable (fdatasync) before the next, so that disk requests are in flight
// whenever the guest is captured; "bunkerguest io-check FILE" checks them.
const IOParam = "bunkerguest.io"

// DeviceModules are the guest kernel's modules for the required devices
// that the stock Debian kernel builds as modules, relative to its modules
// directory and in load order (dependencies first). The default guest
// image carries them, and bunkerguest uinit loads them at boot, so that
// the disks, the NIC and the entropy source have drivers before the
// snapshot. virtio-pci and virtio-console are built in.
var DeviceModules = []string{
	"kernel/net/core/failover.ko.xz",
	"kernel/drivers/net/net_failover.ko.xz",
	"kernel/drivers/net/virtio_net.ko.xz",
	"kernel/drivers/block/virtio_blk.ko.xz",
	"kernel/drivers/char/hw_random/virtio-rng.ko.xz",
	"kernel/fs/fat/fat.ko.xz",
	"kernel/fs/fat/vfat.ko.xz",
	"kernel/fs/nls/nls_cp437.ko.xz",
	"kernel/fs/nls/nls_ascii.ko.xz",
}
