package machine

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// doorbells has KVM catch the drivers' writes to the virtio queues'
// notification registers (KVM_IOEVENTFD): such a write signals an eventfd
// inside the kernel and the vCPU goes straight back to the guest, where a
// write to the BAR would cost it an exit to this process. A goroutine per
// queue passes the signal on to the device. The registrations follow the
// BARs: wherever the PCI window decodes a function's BAR 0, and nowhere
// while it does not. Writes of another width still exit and reach the
// device through the window.
type doorbells struct {
	vm    *kvm.VM
	win   *pci.Window
	log   func(error)
	mu    sync.Mutex
	bells []*doorbell
}

// doorbell is one queue's notification register.
type doorbell struct {
	slot int
	dev  *virtio.PCIDevice
	q    int
	file *os.File // the eventfd, for reads through the poller
	fd   int      // its descriptor, for KVM (File.Fd would make it blocking)
	addr uint64   // where it is registered; 0 when it is not
}

// catchDoorbells sets up the doorbells of the machine's virtio devices,
// if this host's KVM can; without, the kicks come as MMIO exits. Devices
// made without a VM (in tests) have none.
func (m *Machine) catchDoorbells() error {
	if m.vm == nil || m.sys.CheckExtension(kvm.CapIOEventFD) == 0 || len(m.functions) == 0 {
		return nil
	}
	d := &doorbells{vm: m.vm, win: m.pci.Window(), log: func(err error) { m.cfg.Log.Printf("doorbells: %v", err) }}
	m.close = append(m.close, d.close)
	for _, f := range m.functions {
		for q := range f.dev.Queues() {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
			if err != nil {
				return fmt.Errorf("doorbell eventfd: %w", err)
			}
			// A non-blocking descriptor: reads wait in the runtime's
			// poller, and Close wakes them.
			b := &doorbell{slot: f.slot, dev: f.dev, q: q, file: os.NewFile(uintptr(fd), "doorbell"), fd: fd}
			d.bells = append(d.bells, b)
			go b.ring()
		}
	}
	d.win.OnRemap(d.sync)
	d.sync()
	return nil
}

// ring passes each signal of the eventfd on to the device, until the
// eventfd is closed. It waits in the poller and reads with a raw system
// call (kvm.ReadPolled), which does not wake the runtime's sysmon thread on
// every kick (README, "Device benchmark").
func (b *doorbell) ring() {
	rc, err := b.file.SyscallConn()
	if err != nil {
		return // only for a closed file
	}
	var buf [8]byte
	for {
		if _, err := kvm.ReadPolled(rc, buf[:]); err != nil {
			return // closed
		}
		b.dev.Kicked(b.q)
	}
}

// sync registers each doorbell where its BAR is decoded now.
func (d *doorbells) sync() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.bells {
		var want uint64
		if base, ok := d.win.DecodedAt(b.slot, 0); ok {
			want = base + b.dev.Doorbell(b.q)
		}
		if want == b.addr {
			continue
		}
		if b.addr != 0 {
			if err := d.vm.RemoveMMIOEventFD(b.addr, virtio.DoorbellSize, b.fd); err != nil {
				d.log(err)
			}
			b.addr = 0
		}
		if want != 0 {
			if err := d.vm.AddMMIOEventFD(want, virtio.DoorbellSize, b.fd); err != nil {
				d.log(err) // the kicks keep coming as exits
				continue
			}
			b.addr = want
		}
	}
}

// close unregisters the doorbells and closes their eventfds, which ends
// their goroutines.
func (d *doorbells) close() error {
	d.win.OnRemap(nil)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.bells {
		if b.addr != 0 {
			d.vm.RemoveMMIOEventFD(b.addr, virtio.DoorbellSize, b.fd)
		}
		b.file.Close()
	}
	return nil
}
