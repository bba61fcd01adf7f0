package net

import (
	"bytes"
	"encoding/binary"
	stdnet "net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

// msiLog records MSI messages' data.
type msiLog struct {
	mu   sync.Mutex
	data []uint32
}

func (m *msiLog) SignalMSI(lo, hi, data uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data = append(m.data, data)
	return nil
}

// eventually polls cond for up to two seconds.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func (m *msiLog) has(v uint32) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Contains(m.data, v)
}

// Offsets in struct virtio_pci_common_cfg, and virtio_pci_cap types.
const (
	ccDeviceFeatureSelect = 0x00
	ccDeviceFeature       = 0x04
	ccDriverFeatureSelect = 0x08
	ccDriverFeature       = 0x0c
	ccConfigMSIXVector    = 0x10
	ccDeviceStatus        = 0x14
	ccConfigGeneration    = 0x15
	ccQueueSelect         = 0x16
	ccQueueSize           = 0x18
	ccQueueMSIXVector     = 0x1a
	ccQueueEnable         = 0x1c
	ccQueueNotifyOff      = 0x1e
	ccQueueDesc           = 0x20
	ccQueueDriver         = 0x28
	ccQueueDevice         = 0x30

	capCommon = 1
	capNotify = 2
	capDevice = 4
)

// pciDriver drives a virtio-net device through the PCI transport, as a
// guest's driver would.
type pciDriver struct {
	t          *testing.T
	pd         *virtio.PCIDevice
	common     uint64
	notify     uint64
	multiplier uint64
	device     uint64
	msixTable  uint64
}

func newPCIDriver(t *testing.T, pd *virtio.PCIDevice) *pciDriver {
	dr := &pciDriver{t: t, pd: pd}
	var p [1]byte
	pd.Endpoint.ReadConfig(pci.OffCapPtr, p[:])
	for off := p[0]; off != 0; {
		var c [20]byte
		for i := 0; i < len(c); i += 4 {
			pd.Endpoint.ReadConfig(off+uint8(i), c[i:i+4])
		}
		le := binary.LittleEndian
		switch c[0] {
		case pci.CapVendor:
			at := uint64(le.Uint32(c[8:]))
			switch c[3] {
			case capCommon:
				dr.common = at
			case capNotify:
				dr.notify, dr.multiplier = at, uint64(le.Uint32(c[16:]))
			case capDevice:
				dr.device = at
			}
		case 0x11: // MSI-X
			dr.msixTable = uint64(le.Uint32(c[4:]) &^ 7)
			pd.Endpoint.WriteConfig(off+3, []byte{0x80}) // enable
		}
		off = c[1]
	}
	return dr
}

func (dr *pciDriver) w(off uint64, size int, v uint64) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	dr.pd.WriteBAR(0, off, b)
}

func (dr *pciDriver) r(off uint64, size int) uint64 {
	b := make([]byte, size)
	dr.pd.ReadBAR(0, off, b)
	var v uint64
	for i := size - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// setup negotiates features and enables both queues of g, with MSI-X
// vector 0 for configuration changes (data 0x40) and vectors 1 and 2 for
// the queues (0x41, 0x42).
func (dr *pciDriver) setup(g *guest, features uint64) {
	c := dr.common
	dr.w(c+ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	var offered uint64
	for sel := range uint64(2) {
		dr.w(c+ccDeviceFeatureSelect, 4, sel)
		offered |= dr.r(c+ccDeviceFeature, 4) << (32 * sel)
	}
	if features&^offered != 0 {
		dr.t.Fatalf("features %#x not offered (%#x)", features&^offered, offered)
	}
	for sel := range uint64(2) {
		dr.w(c+ccDriverFeatureSelect, 4, sel)
		dr.w(c+ccDriverFeature, 4, features>>(32*sel)&0xffffffff)
	}
	dr.w(c+ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	for v := range uint64(3) {
		e := dr.msixTable + 16*v
		dr.w(e, 4, 0xfee00000)
		dr.w(e+8, 4, 0x40+v)
		dr.w(e+12, 4, 0)
	}
	dr.w(c+ccConfigMSIXVector, 2, 0)
	for i, r := range g.rings {
		dr.w(c+ccQueueSelect, 2, uint64(i))
		dr.w(c+ccQueueSize, 2, uint64(r.size))
		dr.w(c+ccQueueMSIXVector, 2, uint64(i+1))
		dr.w(c+ccQueueDesc, 4, r.desc)
		dr.w(c+ccQueueDriver, 4, r.avail)
		dr.w(c+ccQueueDevice, 4, r.used)
		dr.w(c+ccQueueEnable, 2, 1)
	}
	dr.w(c+ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	if st := dr.r(c+ccDeviceStatus, 1); st != 15 {
		dr.t.Fatalf("status %#x after setup", st)
	}
}

func (dr *pciDriver) kick(q int) {
	dr.w(dr.common+ccQueueSelect, 2, uint64(q))
	off := dr.r(dr.common+ccQueueNotifyOff, 2)
	dr.w(dr.notify+off*dr.multiplier, 2, uint64(q))
}

// TestPCI drives the device through the virtio PCI transport: feature
// negotiation, the configuration, a transmission, an Attach on the live
// device with its configuration change, a reception with its interrupt,
// and a reset that stops the receive goroutine but keeps the link.
func TestPCI(t *testing.T) {
	g := newGuest(t)
	d, err := New(Options{MAC: []byte{0x52, 0x54, 0, 0xab, 0xcd, 0xef}})
	if err != nil {
		t.Fatal(err)
	}
	sink := &msiLog{}
	pd, err := virtio.NewPCIDevice(d, g.mem, sink, func(err error) { t.Logf("transport: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer pd.Close()
	dr := newPCIDriver(t, pd)
	dr.setup(g, virtio.FeatureVersion1|featMAC|featStatus|featMrgRxbuf|featCsum|featGuestCsum)

	cfg := make([]byte, configSize)
	pd.ReadBAR(0, dr.device, cfg)
	if want := []byte{0x52, 0x54, 0, 0xab, 0xcd, 0xef, 0, 0, 1, 0, 0, 0}; !bytes.Equal(cfg, want) {
		t.Errorf("configuration % x, want % x", cfg, want)
	}

	// Transmitting while disconnected drops.
	p := packet(100, 1)
	g.post(txQueue, rd(p[:HeaderSize]), rd(p[HeaderSize:]))
	dr.kick(txQueue) // served off the vCPU thread: wait for it
	if !eventually(func() bool { return d.Stats().TxDropped == 1 && sink.has(0x42) }) {
		t.Errorf("after a transmit while disconnected: stats %+v, transmit interrupt %v", d.Stats(), sink.has(0x42))
	}

	link, peer := socketPair(t)
	gen := dr.r(dr.common+ccConfigGeneration, 1)
	if err := d.Attach(link); err != nil {
		t.Fatal(err)
	}
	if dr.r(dr.common+ccConfigGeneration, 1) == gen {
		t.Error("the configuration generation did not change with Attach")
	}
	if !sink.has(0x40) {
		t.Error("no configuration change interrupt")
	}
	if st := dr.r(dr.device+cfgStatus, 2); st != statusLinkUp {
		t.Errorf("link status %#x after Attach", st)
	}

	g.post(txQueue, rd(p[:HeaderSize]), rd(p[HeaderSize:]))
	dr.kick(txQueue)
	if got := recv(t, peer); !bytes.Equal(got, p) {
		t.Errorf("the link got % x", got)
	}

	var rx []rxPosted
	for range 4 {
		head, addrs := g.post(rxQueue, wr(4096))
		rx = append(rx, rxPosted{head, addrs, []int{4096}})
	}
	dr.kick(rxQueue)
	in := packet(6000, 2)
	if err := peer.WritePacket([][]byte{in}); err != nil {
		t.Fatal(err)
	}
	var used []usedElem
	deadline := time.Now().Add(5 * time.Second)
	for len(used) < 2 && time.Now().Before(deadline) {
		pd.Do(func([]*virtio.Queue) error {
			used = append(used, g.rings[rxQueue].takeUsed()...)
			return nil
		})
		time.Sleep(time.Millisecond)
	}
	if len(used) != 2 {
		t.Fatalf("used %v", used)
	}
	var got []byte
	for i, u := range used {
		got = append(got, g.read(rx[i].addrs, rx[i].ns, int(u.len))...)
	}
	if !bytes.Equal(got, withNumBuffers(in, 2)) {
		t.Error("the guest got another packet")
	}
	deadline = time.Now().Add(5 * time.Second)
	for !sink.has(0x41) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !sink.has(0x41) {
		t.Error("no receive interrupt")
	}

	// A reset stops the receive goroutine; the link stays.
	dr.w(dr.common+ccDeviceStatus, 1, 0)
	d.ctl.Lock()
	running := d.rd != nil
	d.ctl.Unlock()
	if running {
		t.Error("the receive goroutine survived a reset")
	}
	if d.Detach() != Link(link) {
		t.Error("the link did not stay attached through a reset")
	}
}

// TestPCISnapshot: a device captured disconnected and restored into a
// device made without a MAC keeps the guest's MAC, goes live paused, and
// takes a link attached after the restore.
func TestPCISnapshot(t *testing.T) {
	g := newGuest(t)
	mac := []byte{0x52, 0x54, 0, 1, 1, 1}
	d, err := New(Options{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	pd, err := virtio.NewPCIDevice(d, g.mem, &msiLog{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dr := newPCIDriver(t, pd)
	dr.setup(g, virtio.FeatureVersion1|featMAC|featStatus|featMrgRxbuf)
	head, addrs := g.post(rxQueue, wr(4096))
	dr.kick(rxQueue)
	pd.Pause()
	st, err := pd.State()
	if err != nil {
		t.Fatal(err)
	}
	pd.Close()

	d2, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	sink := &msiLog{}
	pd2, err := virtio.NewPCIDevice(d2, g.mem, sink, func(err error) { t.Logf("transport: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer pd2.Close()
	if err := pd2.SetState(st); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d2.MAC(), mac) {
		t.Errorf("restored MAC %v, want %v", d2.MAC(), stdnetMAC(mac))
	}
	pd2.Resume()
	pd2.Kick()
	link, peer := socketPair(t)
	if err := d2.Attach(link); err != nil {
		t.Fatal(err)
	}
	if !sink.has(0x40) {
		t.Error("no configuration change interrupt after Attach")
	}
	p := packet(1000, 3)
	if err := peer.WritePacket([][]byte{p}); err != nil {
		t.Fatal(err)
	}
	var used []usedElem
	deadline := time.Now().Add(5 * time.Second)
	for len(used) < 1 && time.Now().Before(deadline) {
		pd2.Do(func([]*virtio.Queue) error {
			used = append(used, g.rings[rxQueue].takeUsed()...)
			return nil
		})
		time.Sleep(time.Millisecond)
	}
	if len(used) != 1 || used[0].id != uint32(head) {
		t.Fatalf("used %v", used)
	}
	if got := g.read(addrs, []int{4096}, int(used[0].len)); !bytes.Equal(got, withNumBuffers(p, 1)) {
		t.Error("the restored device delivered another packet")
	}
}

func stdnetMAC(b []byte) string { return stdnet.HardwareAddr(b).String() }
