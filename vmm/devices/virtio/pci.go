package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
)

// Backend is a virtio device behind the PCI transport: virtio-rng,
// virtio-blk, and so on.
type Backend interface {
	// Type is the virtio device ID (4 for an entropy source); the PCI
	// device ID is 0x1040 plus it.
	Type() uint16
	// Features are the device-specific features offered.
	Features() uint64
	// QueueSizes are the largest sizes of the device's queues.
	QueueSizes() []uint16
	// ReadConfig and WriteConfig serve the device-specific configuration.
	ReadConfig(off uint64, data []byte)
	WriteConfig(off uint64, data []byte)
	// Notify tells the device the driver made buffers available on its
	// queue q; queues are enabled and the device live.
	Notify(q int, queues []*Queue) error
	// Reset returns the device to its initial state.
	Reset()
}

// Layout of the transport's BAR 0 (memory).
const (
	BARSize          = 0x8000
	commonOff        = 0x0000
	commonLen        = 0x38
	isrOff           = 0x1000
	deviceOff        = 0x2000
	deviceLen        = 0x1000
	notifyOff        = 0x3000
	notifyMultiplier = 4
	msixTableOff     = 0x4000
	msixPBAOff       = 0x5000

	vendorVirtio = 0x1af4
	deviceBase   = 0x1040

	// virtio_pci_cap cfg_type values.
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
)

// Common configuration offsets (struct virtio_pci_common_cfg).
const (
	ccDeviceFeatureSelect = 0x00
	ccDeviceFeature       = 0x04
	ccDriverFeatureSelect = 0x08
	ccDriverFeature       = 0x0c
	ccConfigMSIXVector    = 0x10
	ccNumQueues           = 0x12
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
)

// noVector is VIRTIO_MSI_NO_VECTOR.
const noVector = 0xffff

// PCIDevice is a virtio device on the modern (1.x) PCI transport, with
// MSI-X interrupts: one vector for configuration changes and one per
// queue.
type PCIDevice struct {
	Endpoint *pci.Endpoint
	MSIX     *pci.MSIX

	mu      sync.Mutex
	backend Backend
	mem     Memory
	status  *Status
	log     func(error)

	featureSel, driverSel uint32
	queueSel              uint16
	configVector          uint16
	isr                   uint8
	queues                []*Queue
	qcfg                  []queueConfig
}

type queueConfig struct {
	size, vector uint16
	enabled      bool
	desc, driver uint64
	device       uint64
}

// NewPCIDevice puts backend behind the transport. mem is guest RAM, sink
// delivers MSI-X messages, log receives what the driver did wrong.
func NewPCIDevice(backend Backend, mem Memory, sink pci.MSISink, log func(error)) (*PCIDevice, error) {
	sizes := backend.QueueSizes()
	if len(sizes) == 0 || len(sizes) > 64 {
		return nil, fmt.Errorf("virtio: %d queues, want 1 to 64", len(sizes))
	}
	d := &PCIDevice{backend: backend, mem: mem, status: NewStatus(backend.Features()), log: log}
	vectors := len(sizes) + 1
	caps := []pci.Capability{
		pci.MSIXCapability(vectors, 0, msixTableOff, 0, msixPBAOff),
		virtioCap(capCommon, commonOff, commonLen, nil),
		virtioCap(capNotify, notifyOff, uint32(notifyMultiplier*len(sizes)), binary.LittleEndian.AppendUint32(nil, notifyMultiplier)),
		virtioCap(capISR, isrOff, 1, nil),
		virtioCap(capDevice, deviceOff, deviceLen, nil),
	}
	ep, err := pci.NewEndpoint(pci.Header{Vendor: vendorVirtio, Device: deviceBase + backend.Type(), Revision: 1,
		Class: 0xff0000, SubsystemVendor: vendorVirtio, Subsystem: deviceBase + backend.Type()},
		[6]pci.BAR{{Size: BARSize, Is64: true}}, caps)
	if err != nil {
		return nil, err
	}
	d.Endpoint = ep
	capOff, _ := ep.Capability(pci.CapMSIX)
	control := func() uint16 {
		var b [2]byte
		ep.ReadConfig(capOff+2, b[:])
		return binary.LittleEndian.Uint16(b[:])
	}
	if d.MSIX, err = pci.NewMSIX(vectors, sink, control, log); err != nil {
		return nil, err
	}
	ep.OnWrite = func(uint8, int) { d.MSIX.Update() }
	d.reset()
	return d, nil
}

// virtioCap is a struct virtio_pci_cap (after ID and next) for BAR 0.
func virtioCap(cfgType uint8, off, length uint32, extra []byte) pci.Capability {
	body := make([]byte, 14, 14+len(extra))
	body[0] = byte(16 + len(extra)) // cap_len, ID and next included
	body[1] = cfgType
	body[2] = 0 // bar
	binary.LittleEndian.PutUint32(body[6:], off)
	binary.LittleEndian.PutUint32(body[10:], length)
	return pci.Capability{ID: pci.CapVendor, Body: append(body, extra...)}
}

func (d *PCIDevice) reset() {
	sizes := d.backend.QueueSizes()
	d.queues = make([]*Queue, len(sizes))
	d.qcfg = make([]queueConfig, len(sizes))
	for i, s := range sizes {
		d.qcfg[i] = queueConfig{size: s, vector: noVector}
	}
	d.featureSel, d.driverSel, d.queueSel, d.configVector, d.isr = 0, 0, 0, noVector, 0
	d.backend.Reset()
}

// ReadBAR and WriteBAR serve BAR 0, at offset off from its base.
func (d *PCIDevice) ReadBAR(off uint64, data []byte) {
	switch {
	case off >= msixTableOff && off < msixPBAOff:
		d.MSIX.ReadTable(off-msixTableOff, data)
		return
	case off >= msixPBAOff && off < BARSize:
		d.MSIX.ReadPBA(off-msixPBAOff, data)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range data {
		data[i] = 0
	}
	switch {
	case off < commonOff+commonLen:
		d.readCommon(off, data)
	case off == isrOff && len(data) == 1:
		data[0], d.isr = d.isr, 0 // reading clears it
	case off >= deviceOff && off < deviceOff+deviceLen:
		d.backend.ReadConfig(off-deviceOff, data)
	}
}

// WriteBAR writes BAR 0.
func (d *PCIDevice) WriteBAR(off uint64, data []byte) {
	switch {
	case off >= msixTableOff && off < msixPBAOff:
		d.MSIX.WriteTable(off-msixTableOff, data)
		return
	case off >= msixPBAOff:
		return // the PBA is read-only
	}
	d.mu.Lock()
	var kick = -1
	var err error
	switch {
	case off < commonOff+commonLen:
		err = d.writeCommon(off, data)
	case off >= deviceOff && off < deviceOff+deviceLen:
		d.backend.WriteConfig(off-deviceOff, data)
	case off >= notifyOff && off < notifyOff+uint64(notifyMultiplier*len(d.queues)):
		kick = int((off - notifyOff) / notifyMultiplier)
	}
	d.mu.Unlock()
	if err != nil {
		d.fail(err)
	}
	if kick >= 0 {
		d.notify(kick)
	}
}

// notify runs the backend for queue q and interrupts the driver.
func (d *PCIDevice) notify(q int) {
	d.mu.Lock()
	live, enabled := d.status.Live(), d.qcfg[q].enabled
	queues := d.queues
	d.mu.Unlock()
	if !live || !enabled {
		return
	}
	if err := d.backend.Notify(q, queues); err != nil {
		d.fail(err)
		return
	}
	d.Interrupt(q)
}

// Interrupt signals used buffers on queue q.
func (d *PCIDevice) Interrupt(q int) {
	d.mu.Lock()
	d.isr |= 1
	v := d.qcfg[q].vector
	d.mu.Unlock()
	if v != noVector {
		d.MSIX.Notify(int(v))
	}
}

// fail puts the device in the needs-reset state and tells the driver.
func (d *PCIDevice) fail(err error) {
	err = d.status.NeedsReset(err)
	if d.log != nil {
		d.log(err)
	}
	d.mu.Lock()
	d.isr |= 2 // configuration change
	v := d.configVector
	d.mu.Unlock()
	if v != noVector {
		d.MSIX.Notify(int(v))
	}
}

func (d *PCIDevice) selected() *queueConfig {
	if int(d.queueSel) < len(d.qcfg) {
		return &d.qcfg[d.queueSel]
	}
	return nil
}

func (d *PCIDevice) readCommon(off uint64, data []byte) {
	var b [commonLen]byte
	le := binary.LittleEndian
	le.PutUint32(b[ccDeviceFeatureSelect:], d.featureSel)
	if d.featureSel < 2 {
		le.PutUint32(b[ccDeviceFeature:], uint32(d.status.Offered()>>(32*d.featureSel)))
	}
	le.PutUint32(b[ccDriverFeatureSelect:], d.driverSel)
	if d.driverSel < 2 {
		le.PutUint32(b[ccDriverFeature:], uint32(d.status.Accepted()>>(32*d.driverSel)))
	}
	le.PutUint16(b[ccConfigMSIXVector:], d.configVector)
	le.PutUint16(b[ccNumQueues:], uint16(len(d.qcfg)))
	b[ccDeviceStatus] = d.status.Get()
	le.PutUint16(b[ccQueueSelect:], d.queueSel)
	if q := d.selected(); q != nil {
		le.PutUint16(b[ccQueueSize:], q.size)
		le.PutUint16(b[ccQueueMSIXVector:], q.vector)
		if q.enabled {
			le.PutUint16(b[ccQueueEnable:], 1)
		}
		le.PutUint16(b[ccQueueNotifyOff:], d.queueSel)
		le.PutUint64(b[ccQueueDesc:], q.desc)
		le.PutUint64(b[ccQueueDriver:], q.driver)
		le.PutUint64(b[ccQueueDevice:], q.device)
	}
	if off+uint64(len(data)) <= commonLen {
		copy(data, b[off:])
	}
}

// writeCommon applies a driver write to the common configuration; an
// error is a queue the driver set up wrongly.
func (d *PCIDevice) writeCommon(off uint64, data []byte) error {
	if off+uint64(len(data)) > commonLen {
		return nil
	}
	var v uint64
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	q := d.selected()
	vectors := uint64(len(d.qcfg) + 1)
	switch {
	case off == ccDeviceFeatureSelect && len(data) == 4:
		d.featureSel = uint32(v)
	case off == ccDriverFeatureSelect && len(data) == 4:
		d.driverSel = uint32(v)
	case off == ccDriverFeature && len(data) == 4 && d.driverSel < 2:
		shift := 32 * d.driverSel
		d.status.Accept(d.status.Accepted()&^(0xffffffff<<shift) | v<<shift)
	case off == ccConfigMSIXVector && len(data) == 2:
		d.configVector = vectorOrNone(v, vectors)
	case off == ccDeviceStatus && len(data) == 1:
		if d.status.Set(uint8(v)) {
			d.reset()
		}
	case off == ccQueueSelect && len(data) == 2:
		d.queueSel = uint16(v)
	case q == nil || q.enabled && off != ccQueueMSIXVector:
		// No such queue, or one the driver may no longer reconfigure.
	case off == ccQueueSize && len(data) == 2:
		if max := d.backend.QueueSizes()[d.queueSel]; v >= 1 && v <= uint64(max) && v&(v-1) == 0 {
			q.size = uint16(v)
		}
	case off == ccQueueMSIXVector && len(data) == 2:
		q.vector = vectorOrNone(v, vectors)
	case off == ccQueueEnable && len(data) == 2 && v == 1:
		queue := &Queue{Size: q.size, Desc: q.desc, Avail: q.driver, Used: q.device}
		if err := queue.Enable(d.mem); err != nil {
			return fmt.Errorf("queue %d: %w", d.queueSel, err)
		}
		d.queues[d.queueSel], q.enabled = queue, true
	case (off == ccQueueDesc || off == ccQueueDesc+4) && len(data) == 4:
		q.desc = setHalf(q.desc, off-ccQueueDesc, v)
	case (off == ccQueueDriver || off == ccQueueDriver+4) && len(data) == 4:
		q.driver = setHalf(q.driver, off-ccQueueDriver, v)
	case (off == ccQueueDevice || off == ccQueueDevice+4) && len(data) == 4:
		q.device = setHalf(q.device, off-ccQueueDevice, v)
	}
	return nil
}

// vectorOrNone accepts an MSI-X vector the table has, or NO_VECTOR.
func vectorOrNone(v, n uint64) uint16 {
	if v < n {
		return uint16(v)
	}
	return noVector
}

func setHalf(x, half, v uint64) uint64 {
	if half == 0 {
		return x&^0xffffffff | v
	}
	return x&0xffffffff | v<<32
}
