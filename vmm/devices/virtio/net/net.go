// Package net is a virtio-net device (virtio 1.x, 5.1) for the virtio PCI
// transport: one receive queue (0) and one transmit queue (1), of
// QueueSize each, no control queue and no multiqueue. Packets go to and
// come from a Link, normally a Linux tap (OpenTap); every packet on a
// Link carries the 12-byte virtio_net_hdr_v1 the guest exchanges with the
// device, so checksum and segmentation offloads pass through unchanged.
//
// # Disconnected at build, attached at resume
//
// A Device starts disconnected: it has no Link, its configuration says
// the link is down, whatever the guest transmits is dropped (and counted
// in Stats) and nothing is received. A machine is built and captured in
// that state, so a snapshot holds no host network state at all, and the
// Link is not part of the device's saved state. When a machine is
// resumed, its device is restored (the transport's SetState) and a Link
// is attached with Attach: the link comes up and, if the device is live,
// the guest is told with a configuration-change interrupt, so attach it
// once the machine's interrupt controllers are restored. Detach takes the
// Link away again; detach it before capturing a machine that has one,
// since a snapshot cannot hold receive buffers the device took from the
// guest for a packet it has not finished delivering (SaveState refuses).
//
// # The MAC address
//
// The MAC is part of the guest's view of the device: its kernel read it
// at boot and configured the interface with it. It is saved with the
// device, and RestoreState refuses a snapshot of a device with a
// different MAC than the one New was given; a device made without a MAC
// (a random one) takes the snapshot's. Every machine resumed from one
// artifact therefore has the same MAC, and the same addresses the guest
// configured before the capture: connect each to a network of its own
// (its own tap, routed or NATed by the host, not bridged together with
// the others), or have the guest change its address after the resume.
//
// # Receive
//
// The receive side reads the Link on a goroutine of its own while the
// device is live (virtio.Worker). With VIRTIO_NET_F_MRG_RXBUF negotiated,
// a packet fills as many of the guest's buffers as it needs, num_buffers
// in its header saying how many; without it, each packet must fit in one
// buffer, and one that does not is dropped. When the guest has not posted
// enough buffers for a packet, the device keeps the packet (and the
// buffers it took) and waits for the guest to post more, so that a slow
// guest slows the link (the tap queues, then drops, in the host) instead
// of losing packets here. A packet is dropped, and counted, only when it
// cannot be delivered at all: it is malformed, or larger than all the
// buffers the queue can hold, or uses an offload the guest did not
// accept. A missing checksum the guest did not accept to finish itself
// is computed by the device.
//
// # Transmit
//
// Transmission runs on the vCPU thread that notified the queue: each
// chain's buffers, header and frame, are written to the Link as one
// packet with one writev, straight from guest memory.
//
// # Hostile chains
//
// Every chain is written by the guest and treated as hostile. A transmit
// chain with a device-writable buffer or shorter than the header, and a
// receive chain with a device-readable buffer or no room at all, are
// broken chains (virtio.ErrBadChain): the transport puts the device into
// its needs-reset state. A transmitted frame larger than MaxFrameSize is
// dropped and counted.
package net

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

const (
	// QueueSize is the size of each of the device's two queues.
	QueueSize = 256
	// HeaderSize is the size of struct virtio_net_hdr_v1, which starts
	// every packet between the device and the guest and on a Link.
	HeaderSize = 12
	// MaxFrameSize is the largest frame (without the header) the device
	// transmits or receives: a 64 KiB segmentation-offload packet and
	// its Ethernet header.
	MaxFrameSize = 65550
	// maxPacket is the largest packet on a Link.
	maxPacket = HeaderSize + MaxFrameSize
	// ethHeaderSize is the smallest frame the device passes to the
	// guest.
	ethHeaderSize = 14
)

// Queue indices.
const (
	rxQueue = 0
	txQueue = 1
)

// Feature bits (virtio 1.x, 5.1.3).
const (
	featCsum      = 1 << 0
	featGuestCsum = 1 << 1
	featMAC       = 1 << 5
	featGuestTSO4 = 1 << 7
	featGuestTSO6 = 1 << 8
	featHostTSO4  = 1 << 11
	featHostTSO6  = 1 << 12
	featMrgRxbuf  = 1 << 15
	featStatus    = 1 << 16

	offered = featCsum | featGuestCsum | featMAC | featGuestTSO4 | featGuestTSO6 |
		featHostTSO4 | featHostTSO6 | featMrgRxbuf | featStatus
)

// struct virtio_net_config.
const (
	cfgMAC        = 0
	cfgStatus     = 6
	cfgMaxVQPairs = 8
	cfgMTU        = 10
	configSize    = 12

	statusLinkUp = 1
)

// Options configure a Device.
type Options struct {
	// MAC is the device's Ethernet address: 6 bytes, unicast, not zero.
	// If nil, the device makes a random locally administered one, which
	// a restored snapshot replaces with its own.
	MAC stdnet.HardwareAddr
	// Log, if set, receives what goes wrong with the Link: read and
	// write errors (each once per attachment), offloads it refused.
	Log func(error)
}

// Stats are a device's packet counters. Bytes count frames, without the
// virtio-net header.
type Stats struct {
	TxPackets, TxBytes, TxDropped uint64
	RxPackets, RxBytes, RxDropped uint64
}

// Device is a virtio-net backend: a virtio.Backend, virtio.Worker and
// virtio.Stateful for the PCI transport. The transport serialises
// Notify, Reset, ReadConfig and SaveState with each other and with the
// receive goroutine's work; Attach, Detach and Stats may be called from
// any goroutine.
type Device struct {
	log func(error)

	// mu guards the MAC.
	mu           sync.Mutex
	mac          [6]byte
	generatedMAC bool

	// linkMu guards link: transmission holds it for reading while it
	// uses the link, so that a Detach waits for it.
	linkMu sync.RWMutex
	link   *attachment

	// ctl serialises Start, Stop, Attach and Detach, and guards what
	// they share.
	ctl      sync.Mutex
	started  bool
	t        virtio.Transport
	features uint64
	rd       *reader
	rxBuf    []byte // the receive goroutine's; one runs at a time

	// kick is signalled by Notify on the receive queue, to wake a
	// receive goroutine waiting for buffers.
	kick chan struct{}

	// rxMu guards the receive chains taken from the guest and not yet
	// used; they belong to stashQ.
	rxMu   sync.Mutex
	stash  []rxChain
	stashQ *virtio.Queue

	txBufs [][]byte // Notify's scratch; the transport serialises Notify

	txPackets, txBytes, txDropped atomic.Uint64
	rxPackets, rxBytes, rxDropped atomic.Uint64
}

// attachment is an attached Link.
type attachment struct {
	l           Link
	writeLogged atomic.Bool // a write error was logged
}

var (
	_ virtio.Backend  = (*Device)(nil)
	_ virtio.Worker   = (*Device)(nil)
	_ virtio.Stateful = (*Device)(nil)
)

// New returns a disconnected device with opt's MAC.
func New(opt Options) (*Device, error) {
	d := &Device{log: opt.Log, kick: make(chan struct{}, 1)}
	if opt.MAC == nil {
		if _, err := rand.Read(d.mac[:]); err != nil {
			return nil, fmt.Errorf("virtio-net: random MAC: %w", err)
		}
		d.mac[0] = d.mac[0]&^1 | 2 // unicast, locally administered
		d.generatedMAC = true
		return d, nil
	}
	if err := validMAC(opt.MAC); err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	copy(d.mac[:], opt.MAC)
	return d, nil
}

// validMAC accepts a 6-byte unicast address other than zero.
func validMAC(mac stdnet.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("MAC %v is %d bytes, want 6", mac, len(mac))
	case mac[0]&1 != 0:
		return fmt.Errorf("MAC %v is a multicast address", mac)
	case [6]byte(mac) == [6]byte{}:
		return fmt.Errorf("MAC %v is zero", mac)
	}
	return nil
}

// MAC returns the device's MAC address.
func (d *Device) MAC() stdnet.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(stdnet.HardwareAddr(nil), d.mac[:]...)
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	return Stats{
		TxPackets: d.txPackets.Load(), TxBytes: d.txBytes.Load(), TxDropped: d.txDropped.Load(),
		RxPackets: d.rxPackets.Load(), RxBytes: d.rxBytes.Load(), RxDropped: d.rxDropped.Load(),
	}
}

func (d *Device) logf(format string, args ...any) {
	if d.log != nil {
		d.log(fmt.Errorf("virtio-net: "+format, args...))
	}
}

// AsyncQueue makes the transmit queue's kicks wake the transport's
// goroutine instead of holding the vCPU while the packets are written:
// the guest queues the next packets while the tap takes these.
func (*Device) AsyncQueue(q int) bool { return q == txQueue }

// Type is virtio's network device ID.
func (*Device) Type() uint16 { return virtio.TypeNet }

// Features are the features the device offers: MAC, STATUS, checksum and
// TSO offloads in both directions, and mergeable receive buffers.
func (*Device) Features() uint64 { return offered }

// QueueSizes: the receive queue and the transmit queue.
func (*Device) QueueSizes() []uint16 { return []uint16{QueueSize, QueueSize} }

// ReadConfig serves struct virtio_net_config: the MAC, the link status,
// one queue pair, and no MTU (VIRTIO_NET_F_MTU is not offered). Bytes
// past it read as zero.
func (d *Device) ReadConfig(off uint64, data []byte) {
	var cfg [configSize]byte
	d.mu.Lock()
	copy(cfg[cfgMAC:], d.mac[:])
	d.mu.Unlock()
	d.linkMu.RLock()
	if d.link != nil {
		binary.LittleEndian.PutUint16(cfg[cfgStatus:], statusLinkUp)
	}
	d.linkMu.RUnlock()
	binary.LittleEndian.PutUint16(cfg[cfgMaxVQPairs:], 1)
	binary.LittleEndian.PutUint16(cfg[cfgMTU:], 0)
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o >= off && o < configSize {
			data[i] = cfg[o]
		}
	}
}

// WriteConfig ignores the driver's writes: in virtio 1.x the
// configuration of a device without VIRTIO_NET_F_CTRL_MAC_ADDR is
// read-only.
func (*Device) WriteConfig(uint64, []byte) {}

// Notify serves a queue the driver kicked: on the transmit queue it sends
// every available packet; on the receive queue it wakes a receive
// waiting for buffers.
func (d *Device) Notify(q int, queues []*virtio.Queue) error {
	switch q {
	case rxQueue:
		select {
		case d.kick <- struct{}{}:
		default:
		}
	case txQueue:
		return d.transmit(queues[txQueue])
	}
	return nil
}

// Reset forgets the receive buffers taken from the guest: they belonged
// to the queues the reset discarded.
func (d *Device) Reset() {
	d.clearStash()
	select {
	case <-d.kick:
	default:
	}
}

// Start implements virtio.Worker: the device is live with the negotiated
// features, and receives from its Link, if it has one.
func (d *Device) Start(features uint64, t virtio.Transport) {
	d.ctl.Lock()
	defer d.ctl.Unlock()
	if d.started {
		d.stopReader()
	}
	d.started, d.t, d.features = true, t, features
	d.linkMu.RLock()
	a := d.link
	d.linkMu.RUnlock()
	if a != nil {
		d.startReader(a.l)
	}
}

// Stop implements virtio.Worker: it ends the receive goroutine and
// returns once it has.
func (d *Device) Stop() {
	d.ctl.Lock()
	defer d.ctl.Unlock()
	d.stopReader()
	d.started, d.t = false, nil
	d.clearStash()
}

// ErrAttached is Attach's answer when a Link is already attached.
var ErrAttached = errors.New("virtio-net: a link is already attached")

// Attach connects l to the device: the link is up, transmitted packets go
// to l, and, while the device is live, packets from l are received and
// the guest is told of the link change. Attach a Link to a restored
// device after its machine's interrupt state is restored, so that the
// configuration-change interrupt reaches the guest.
func (d *Device) Attach(l Link) error {
	if l == nil {
		return errors.New("virtio-net: Attach of a nil link")
	}
	d.ctl.Lock()
	defer d.ctl.Unlock()
	d.linkMu.Lock()
	if d.link != nil {
		d.linkMu.Unlock()
		return ErrAttached
	}
	d.link = &attachment{l: l}
	d.linkMu.Unlock()
	if d.started {
		d.startReader(l)
		d.t.ConfigChanged()
	}
	return nil
}

// Detach disconnects the device's Link and returns it (nil if there was
// none), for the caller to close: the link is down, transmitted packets
// are dropped, and the guest is told if the device is live. A packet
// received and not yet delivered is dropped, and the receive buffers the
// device took from the guest for it are returned unused. Once Detach
// returns the device no longer uses the Link.
//
// A packet being delivered while the machine is paused waits for the
// machine to resume, and so does Detach: detach before pausing.
func (d *Device) Detach() Link {
	d.ctl.Lock()
	d.linkMu.Lock()
	a := d.link
	d.link = nil
	d.linkMu.Unlock()
	if a == nil {
		d.ctl.Unlock()
		return nil
	}
	d.stopReader()
	t := d.t
	d.ctl.Unlock()
	if t != nil {
		t.ConfigChanged()
		// Stopped devices have no buffers to return: Reset forgot them.
		_ = t.Do(func(queues []*virtio.Queue) error {
			d.returnStash(queues[rxQueue])
			return nil
		})
	}
	return a.l
}

// offloadsFor returns the receive offloads features allow. The
// segmentation offloads need the checksum one, as the spec's feature
// dependencies and Linux's tap require.
func offloadsFor(features uint64) Offloads {
	csum := features&featGuestCsum != 0
	return Offloads{
		Checksum: csum,
		TSO4:     csum && features&featGuestTSO4 != 0,
		TSO6:     csum && features&featGuestTSO6 != 0,
	}
}

// startReader starts the receive goroutine on l. Call with ctl held,
// while started.
func (d *Device) startReader(l Link) {
	if ol, ok := l.(OffloadLink); ok {
		if err := ol.SetOffloads(offloadsFor(d.features)); err != nil {
			// Received packets are checked against the features anyway.
			d.logf("setting the link's offloads: %w", err)
		}
	}
	if err := l.SetReadDeadline(time.Time{}); err != nil {
		d.logf("clearing the link's read deadline: %w", err)
	}
	if d.rxBuf == nil {
		d.rxBuf = make([]byte, maxPacket)
	}
	r := &reader{link: l, stop: make(chan struct{}), done: make(chan struct{})}
	d.rd = r
	go d.receive(r, d.t, d.features, d.rxBuf)
}

// stopReader stops the receive goroutine, if one runs, and waits for it.
// Call with ctl held.
func (d *Device) stopReader() {
	r := d.rd
	if r == nil {
		return
	}
	d.rd = nil
	close(r.stop)
	if err := r.link.SetReadDeadline(time.Unix(1, 0)); err != nil {
		// The goroutine may stay blocked in ReadPacket; it checks stop
		// before touching the queues again, and under the transport's
		// lock, so it can do no harm, but it cannot be waited for.
		d.logf("stopping the link's reader: %w", err)
		d.rxBuf = nil // it may still read into its buffer
		return
	}
	<-r.done
}

// state is the device's own part of a snapshot.
type state struct {
	MAC string `json:"mac"`
}

// SaveState implements virtio.Stateful: the MAC. It fails while the
// device holds receive buffers for a packet it has not delivered, which
// only a device with a Link can: detach it first.
func (d *Device) SaveState() (json.RawMessage, error) {
	d.rxMu.Lock()
	held := len(d.stash)
	d.rxMu.Unlock()
	if held != 0 {
		return nil, fmt.Errorf("virtio-net: the device holds %d receive buffers for an undelivered packet; detach the link before a snapshot", held)
	}
	return json.Marshal(state{MAC: d.MAC().String()})
}

// RestoreState implements virtio.Stateful. The saved MAC must be this
// device's, unless this device was made without one, when it takes the
// saved one: the guest already knows its MAC.
func (d *Device) RestoreState(b json.RawMessage) error {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("virtio-net: saved state: %w", err)
	}
	mac, err := stdnet.ParseMAC(st.MAC)
	if err != nil {
		return fmt.Errorf("virtio-net: saved MAC: %w", err)
	}
	if err := validMAC(mac); err != nil {
		return fmt.Errorf("virtio-net: saved %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if [6]byte(mac) != d.mac && !d.generatedMAC {
		return fmt.Errorf("virtio-net: the snapshot's device has MAC %v, this one %v: the guest knows the device by its MAC, so a restored device must keep it", mac, stdnet.HardwareAddr(d.mac[:]))
	}
	copy(d.mac[:], mac)
	d.generatedMAC = false
	return nil
}
