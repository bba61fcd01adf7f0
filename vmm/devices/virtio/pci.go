package virtio

import (
	"encoding/binary"
	"encoding/json"
	"errors"
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

// Worker is a Backend that also works outside Notify, from goroutines
// of its own: the receive side of a tap, console input. Start is called
// when the driver sets DRIVER_OK (or a live device is restored), with the
// negotiated features; Stop when the device resets or closes, and it
// returns only once the backend's goroutines no longer use t.
type Worker interface {
	Start(features uint64, t Transport)
	Stop()
}

// Transport is what a Worker's goroutines use to reach the device.
type Transport interface {
	// Do runs f with the device's queues, serialised with Notify and
	// never while the machine is paused for a snapshot; used buffers f
	// returned are signalled after it. It returns ErrStopped, without
	// running f, once the device has reset. An error from f puts the
	// device into its needs-reset state.
	Do(f func(queues []*Queue) error) error
	// ConfigChanged tells the driver the device configuration changed.
	ConfigChanged()
}

// AsyncNotifier is a Backend some of whose queues are served off the
// vCPU thread: a driver's kick of such a queue only wakes a goroutine of
// the transport's, which runs Notify, so that the vCPU goes back to the
// guest at once and the guest fills the queue while the device drains it
// (virtio-net's transmit queue). Kicks that come while the goroutine is
// busy are merged: Notify serves every chain available when it runs.
type AsyncNotifier interface {
	AsyncQueue(q int) bool
}

// ErrStopped is Do's answer once the device has reset or closed.
var ErrStopped = errors.New("virtio: device stopped")

// Stateful is a Backend with state of its own in a snapshot.
type Stateful interface {
	SaveState() (json.RawMessage, error)
	RestoreState(json.RawMessage) error
}

// PCIDevice is a virtio device on the modern (1.x) PCI transport, with
// MSI-X interrupts: one vector for configuration changes and one per
// queue.
type PCIDevice struct {
	Endpoint *pci.Endpoint
	MSIX     *pci.MSIX

	// mu guards the transport registers.
	mu         sync.Mutex
	backend    Backend
	mem        Memory
	status     *Status
	log        func(error)
	generation uint8

	featureSel, driverSel uint32
	queueSel              uint16
	configVector          uint16
	isr                   uint8
	qcfg                  []queueConfig

	// work serialises the backend's use of the queues: Notify on vCPU
	// threads, a Worker's goroutines, and snapshots.
	work    sync.Mutex
	workCh  *sync.Cond // signalled when paused or running change
	queues  []*Queue
	running bool // live: DRIVER_OK set, no reset since
	paused  bool

	kicks     []chan struct{} // per queue: wakes its goroutine; nil for queues served on the vCPU
	quit      chan struct{}
	workers   sync.WaitGroup
	closeOnce sync.Once
}

type queueConfig struct {
	size, vector uint16
	desc, driver uint64
	device       uint64
	queue        *Queue // mapped when the driver enabled it; nil before
}

// NewPCIDevice puts backend behind the transport. mem is guest RAM, sink
// delivers MSI-X messages, log receives what the driver did wrong.
func NewPCIDevice(backend Backend, mem Memory, sink pci.MSISink, log func(error)) (*PCIDevice, error) {
	sizes := backend.QueueSizes()
	if len(sizes) == 0 || len(sizes) > 64 {
		return nil, fmt.Errorf("virtio: %d queues, want 1 to 64", len(sizes))
	}
	d := &PCIDevice{backend: backend, mem: mem, status: NewStatus(backend.Features()), log: log}
	d.workCh = sync.NewCond(&d.work)
	vectors := len(sizes) + 1
	caps := []pci.Capability{
		pci.MSIXCapability(vectors, 0, msixTableOff, 0, msixPBAOff),
		virtioCap(capCommon, commonOff, commonLen, nil),
		virtioCap(capNotify, notifyOff, uint32(notifyMultiplier*len(sizes)), binary.LittleEndian.AppendUint32(nil, notifyMultiplier)),
		virtioCap(capISR, isrOff, 1, nil),
		virtioCap(capDevice, deviceOff, deviceLen, nil),
	}
	ep, err := pci.NewEndpoint(pci.Header{Vendor: vendorVirtio, Device: deviceBase + backend.Type(), Revision: 1,
		Class: classFor(backend.Type()), SubsystemVendor: vendorVirtio, Subsystem: deviceBase + backend.Type()},
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
	d.resetRegisters()
	d.quit = make(chan struct{})
	d.kicks = make([]chan struct{}, len(sizes))
	if a, ok := backend.(AsyncNotifier); ok {
		for q := range sizes {
			if a.AsyncQueue(q) {
				d.kicks[q] = make(chan struct{}, 1)
				d.workers.Add(1)
				go d.serve(q)
			}
		}
	}
	return d, nil
}

// serve runs Notify for queue q whenever the driver kicked it.
func (d *PCIDevice) serve(q int) {
	defer d.workers.Done()
	for {
		select {
		case <-d.kicks[q]:
			d.drain(q)
		case <-d.quit:
			return
		}
	}
}

// drain serves queue q until it is empty with the driver's kicks turned
// off: chains the driver adds while the device works cost the guest no
// exit. Kicks are turned on again before the device stops looking.
func (d *PCIDevice) drain(q int) {
	for {
		more := false
		// Do reports a broken queue itself; a stopped device stops here.
		err := d.Do(func(queues []*Queue) error {
			vq := queues[q]
			if vq == nil {
				return nil
			}
			vq.SuppressKicks(true)
			err := d.backend.Notify(q, queues)
			more = vq.SuppressKicks(false)
			return err
		})
		if err != nil || !more {
			return
		}
	}
}

// kick serves a driver's notification of queue q: now, on this vCPU
// thread, or by waking the queue's goroutine.
func (d *PCIDevice) kick(q int) {
	if ch := d.kicks[q]; ch != nil {
		select {
		case ch <- struct{}{}:
		default: // already woken: it serves this kick's chains too
		}
		return
	}
	d.notify(q)
}

// classFor returns the PCI class code virtio 1.x devices conventionally
// carry, so that an OS without a virtio driver can still tell what the
// device is: storage, network, communication, or "other".
func classFor(typ uint16) uint32 {
	switch typ {
	case TypeNet:
		return 0x020000
	case TypeBlock:
		return 0x010000
	case TypeConsole:
		return 0x078000
	}
	return 0xff0000
}

// Virtio device IDs.
const (
	TypeNet     = 1
	TypeBlock   = 2
	TypeConsole = 3
	TypeEntropy = 4
)

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

// resetRegisters returns the transport registers to their reset values.
// Call with mu held (or before the device is shared).
func (d *PCIDevice) resetRegisters() {
	sizes := d.backend.QueueSizes()
	d.qcfg = make([]queueConfig, len(sizes))
	for i, s := range sizes {
		d.qcfg[i] = queueConfig{size: s, vector: noVector}
	}
	d.featureSel, d.driverSel, d.queueSel, d.configVector, d.isr = 0, 0, 0, noVector, 0
}

// stop ends the backend's work: Do returns ErrStopped from now on, and a
// Worker's goroutines are stopped. Call without mu held.
func (d *PCIDevice) stop() {
	d.work.Lock()
	was := d.running
	d.running = false
	d.queues = make([]*Queue, len(d.qcfg))
	d.workCh.Broadcast()
	d.work.Unlock()
	if w, ok := d.backend.(Worker); ok && was {
		w.Stop()
	}
	d.work.Lock()
	d.backend.Reset()
	d.work.Unlock()
}

// start makes the device live with the queues the driver enabled.
func (d *PCIDevice) start(queues []*Queue, features uint64) {
	d.work.Lock()
	d.queues = queues
	d.running = true
	d.work.Unlock()
	if w, ok := d.backend.(Worker); ok {
		w.Start(features, d)
	}
}

// Close stops the backend's goroutines and the transport's.
func (d *PCIDevice) Close() error {
	d.closeOnce.Do(func() {
		d.stop()
		close(d.quit)
		d.workers.Wait()
	})
	return nil
}

// ReadBAR and WriteBAR serve BAR 0, at offset off from its base.
func (d *PCIDevice) ReadBAR(bar int, off uint64, data []byte) {
	if bar != 0 {
		fillOnes(data)
		return
	}
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
		d.work.Lock()
		d.backend.ReadConfig(off-deviceOff, data)
		d.work.Unlock()
	}
}

func fillOnes(data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

// WriteBAR writes BAR 0.
func (d *PCIDevice) WriteBAR(bar int, off uint64, data []byte) {
	switch {
	case bar != 0:
		return
	case off >= msixTableOff && off < msixPBAOff:
		d.MSIX.WriteTable(off-msixTableOff, data)
		return
	case off >= msixPBAOff:
		return // the PBA is read-only
	}
	d.mu.Lock()
	var kick = -1
	var act action
	var err error
	switch {
	case off < commonOff+commonLen:
		act, err = d.writeCommon(off, data)
	case off >= deviceOff && off < deviceOff+deviceLen:
		d.work.Lock()
		d.backend.WriteConfig(off-deviceOff, data)
		d.work.Unlock()
	case off >= notifyOff && off < notifyOff+uint64(notifyMultiplier*len(d.qcfg)):
		kick = int((off - notifyOff) / notifyMultiplier)
	}
	d.mu.Unlock()
	switch {
	case err != nil:
		d.fail(err)
	case act.reset:
		d.stop()
	case act.start != nil:
		d.start(act.start, d.status.Accepted())
	case act.add != nil:
		d.work.Lock()
		if d.running {
			d.queues[act.index] = act.add
		}
		d.work.Unlock()
	}
	if kick >= 0 {
		d.kick(kick)
	}
}

// action is what a common-configuration write asks of the backend, done
// after the transport lock is released.
type action struct {
	reset bool
	start []*Queue // DRIVER_OK: go live with these queues
	add   *Queue   // a queue enabled on a live device
	index int      // add's index
}

// notify runs the backend for queue q and interrupts the driver.
func (d *PCIDevice) notify(q int) {
	// Do reports a broken queue itself; a stopped device ignores kicks.
	_ = d.Do(func(queues []*Queue) error {
		if queues[q] == nil {
			return nil // not enabled: nothing to do
		}
		return d.backend.Notify(q, queues)
	})
}

// Do implements Transport.
func (d *PCIDevice) Do(f func(queues []*Queue) error) error {
	d.work.Lock()
	for d.paused && d.running {
		d.workCh.Wait()
	}
	if !d.running || !d.status.Live() {
		d.work.Unlock()
		return ErrStopped
	}
	err := f(d.queues)
	var signal []int
	for i, q := range d.queues {
		if q != nil && q.TakeInterrupt() {
			signal = append(signal, i)
		}
	}
	d.work.Unlock()
	for _, i := range signal {
		d.Interrupt(i)
	}
	if err != nil {
		d.fail(err)
	}
	return err
}

// ConfigChanged implements Transport.
func (d *PCIDevice) ConfigChanged() {
	d.mu.Lock()
	d.generation++
	d.isr |= 2
	v := d.configVector
	d.mu.Unlock()
	if v != noVector {
		d.MSIX.Notify(int(v))
	}
}

// Pause waits for the backend's work in progress and holds further work
// until Resume, so that the queues and guest memory stay still while the
// machine is captured.
func (d *PCIDevice) Pause() {
	d.work.Lock()
	d.paused = true
	d.work.Unlock()
}

// Resume lets paused work go on.
func (d *PCIDevice) Resume() {
	d.work.Lock()
	d.paused = false
	d.workCh.Broadcast()
	d.work.Unlock()
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
	b[ccConfigGeneration] = d.generation
	le.PutUint16(b[ccQueueSelect:], d.queueSel)
	if q := d.selected(); q != nil {
		le.PutUint16(b[ccQueueSize:], q.size)
		le.PutUint16(b[ccQueueMSIXVector:], q.vector)
		if q.queue != nil {
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
func (d *PCIDevice) writeCommon(off uint64, data []byte) (action, error) {
	if off+uint64(len(data)) > commonLen {
		return action{}, nil
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
		wasLive := d.status.Live()
		if d.status.Set(uint8(v)) {
			d.resetRegisters()
			return action{reset: true}, nil
		}
		if !wasLive && d.status.Live() {
			return action{start: d.enabledQueues()}, nil
		}
	case off == ccQueueSelect && len(data) == 2:
		d.queueSel = uint16(v)
	case q == nil || q.queue != nil && off != ccQueueMSIXVector:
		// No such queue, or one the driver may no longer reconfigure.
	case off == ccQueueSize && len(data) == 2:
		if max := d.backend.QueueSizes()[d.queueSel]; v >= 1 && v <= uint64(max) && v&(v-1) == 0 {
			q.size = uint16(v)
		}
	case off == ccQueueMSIXVector && len(data) == 2:
		q.vector = vectorOrNone(v, vectors)
	case off == ccQueueEnable && len(data) == 2 && v == 1:
		queue := &Queue{Size: q.size, Desc: q.desc, Avail: q.driver, Used: q.device, EventIdx: d.status.Accepted()&FeatureEventIdx != 0}
		if err := queue.Enable(d.mem); err != nil {
			return action{}, fmt.Errorf("queue %d: %w", d.queueSel, err)
		}
		q.queue = queue
		if d.status.Live() {
			return action{add: queue, index: int(d.queueSel)}, nil
		}
	case (off == ccQueueDesc || off == ccQueueDesc+4) && len(data) == 4:
		q.desc = setHalf(q.desc, off-ccQueueDesc, v)
	case (off == ccQueueDriver || off == ccQueueDriver+4) && len(data) == 4:
		q.driver = setHalf(q.driver, off-ccQueueDriver, v)
	case (off == ccQueueDevice || off == ccQueueDevice+4) && len(data) == 4:
		q.device = setHalf(q.device, off-ccQueueDevice, v)
	}
	return action{}, nil
}

// enabledQueues returns the queues the driver enabled, mapped and checked
// when it enabled them.
func (d *PCIDevice) enabledQueues() []*Queue {
	qs := make([]*Queue, len(d.qcfg))
	for i, c := range d.qcfg {
		qs[i] = c.queue
	}
	return qs
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

// State is a PCIDevice's snapshot: its configuration space, MSI-X table,
// transport registers, queues and backend.
type State struct {
	Type          uint16          `json:"type"`
	Config        []byte          `json:"pci_config"`
	MSIX          pci.MSIXState   `json:"msix"`
	Status        uint8           `json:"status"`
	Features      uint64          `json:"features"` // accepted by the driver
	FeatureSelect uint32          `json:"feature_select"`
	DriverSelect  uint32          `json:"driver_feature_select"`
	QueueSelect   uint16          `json:"queue_select"`
	ConfigVector  uint16          `json:"config_vector"`
	ISR           uint8           `json:"isr"`
	Generation    uint8           `json:"generation"`
	Queues        []QueueState    `json:"queues"`
	Backend       json.RawMessage `json:"backend,omitempty"`
}

// QueueState is one queue's configuration and the device's indices.
type QueueState struct {
	Size      uint16 `json:"size"`
	Vector    uint16 `json:"vector"`
	Enabled   bool   `json:"enabled"`
	Desc      uint64 `json:"desc"`
	Driver    uint64 `json:"driver"`
	Device    uint64 `json:"device"`
	LastAvail uint16 `json:"last_avail"`
	UsedIdx   uint16 `json:"used_idx"`
}

// State saves the device. Pause it first: the backend is idle then.
func (d *PCIDevice) State() (*State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.work.Lock()
	defer d.work.Unlock()
	st := &State{
		Type: d.backend.Type(), Config: d.Endpoint.Config(), MSIX: d.MSIX.State(),
		Status: d.status.Get(), Features: d.status.Accepted(),
		FeatureSelect: d.featureSel, DriverSelect: d.driverSel, QueueSelect: d.queueSel,
		ConfigVector: d.configVector, ISR: d.isr, Generation: d.generation,
	}
	for i, c := range d.qcfg {
		qs := QueueState{Size: c.size, Vector: c.vector, Enabled: c.queue != nil, Desc: c.desc, Driver: c.driver, Device: c.device}
		if i < len(d.queues) && d.queues[i] != nil {
			qs.LastAvail, qs.UsedIdx = d.queues[i].Indices()
		}
		st.Queues = append(st.Queues, qs)
	}
	if s, ok := d.backend.(Stateful); ok {
		b, err := s.SaveState()
		if err != nil {
			return nil, fmt.Errorf("virtio device type %d: %w", d.backend.Type(), err)
		}
		st.Backend = b
	}
	return st, nil
}

// SetState restores a device saved by State into this fresh one, after
// guest memory is restored. Everything is checked as a driver's writes
// would be: the device type, configuration space and queue count must be
// this device's, the features ones it offers, the queues inside guest
// memory. A live device is restored paused: call Resume, then Kick, once
// the vCPUs are restored.
func (d *PCIDevice) SetState(st *State) error {
	if st.Type != d.backend.Type() {
		return fmt.Errorf("virtio: saved device type %d, this is %d", st.Type, d.backend.Type())
	}
	if len(st.Queues) != len(d.qcfg) {
		return fmt.Errorf("virtio: saved device has %d queues, this one %d", len(st.Queues), len(d.qcfg))
	}
	if err := d.Endpoint.SetConfig(st.Config); err != nil {
		return err
	}
	if err := d.MSIX.SetState(st.MSIX); err != nil {
		return err
	}
	if err := d.status.Restore(st.Status, st.Features); err != nil {
		return err
	}
	vectors := uint64(len(d.qcfg) + 1)
	if st.ConfigVector != vectorOrNone(uint64(st.ConfigVector), vectors) {
		return fmt.Errorf("virtio: saved configuration vector %d, the table has %d", st.ConfigVector, vectors)
	}
	sizes := d.backend.QueueSizes()
	queues := make([]*Queue, len(sizes))
	qcfg := make([]queueConfig, len(sizes))
	for i, qs := range st.Queues {
		if qs.Size == 0 || qs.Size > sizes[i] || qs.Size&(qs.Size-1) != 0 {
			return fmt.Errorf("virtio: saved queue %d has size %d, this device allows powers of two up to %d", i, qs.Size, sizes[i])
		}
		if qs.Vector != vectorOrNone(uint64(qs.Vector), vectors) {
			return fmt.Errorf("virtio: saved queue %d has vector %d, the table has %d", i, qs.Vector, vectors)
		}
		qcfg[i] = queueConfig{size: qs.Size, vector: qs.Vector, desc: qs.Desc, driver: qs.Driver, device: qs.Device}
		if !qs.Enabled {
			continue
		}
		q := &Queue{Size: qs.Size, Desc: qs.Desc, Avail: qs.Driver, Used: qs.Device, EventIdx: st.Features&FeatureEventIdx != 0}
		if err := q.Restore(d.mem, qs.LastAvail, qs.UsedIdx); err != nil {
			return fmt.Errorf("virtio: saved queue %d: %w", i, err)
		}
		queues[i], qcfg[i].queue = q, q
	}
	if s, ok := d.backend.(Stateful); ok {
		if err := s.RestoreState(st.Backend); err != nil {
			return fmt.Errorf("virtio device type %d: %w", d.backend.Type(), err)
		}
	} else if len(st.Backend) != 0 {
		return fmt.Errorf("virtio: saved state for a device type %d backend, which has none", d.backend.Type())
	}
	d.mu.Lock()
	d.qcfg = qcfg
	d.featureSel, d.driverSel, d.queueSel = st.FeatureSelect, st.DriverSelect, st.QueueSelect
	d.configVector, d.isr, d.generation = st.ConfigVector, st.ISR, st.Generation
	d.mu.Unlock()
	if d.status.Live() {
		d.Pause()
		d.start(queues, st.Features)
	}
	return nil
}

// Kick processes what the driver made available while the machine was
// being captured and restored, as if the driver had notified every queue.
func (d *PCIDevice) Kick() {
	for q := range d.qcfg {
		d.notify(q)
	}
}

// DoorbellSize is the width of the driver's writes to a queue's
// notification register: the queue index, 16 bits.
const DoorbellSize = 2

// Doorbell returns the offset, in BAR 0, of queue q's notification
// register, for a VMM that has the hypervisor catch those writes (an
// ioeventfd) and reports them with Kicked.
func (d *PCIDevice) Doorbell(q int) uint64 { return notifyOff + uint64(q)*notifyMultiplier }

// Queues returns the number of queues.
func (d *PCIDevice) Queues() int { return len(d.qcfg) }

// Kicked serves a notification of queue q that reached the VMM without a
// BAR write: the same as the driver's write to Doorbell(q), but served on
// the caller's goroutine, which is not a vCPU's: a queue served off the
// vCPU threads is drained here rather than by waking its goroutine.
func (d *PCIDevice) Kicked(q int) {
	switch {
	case q < 0 || q >= len(d.qcfg):
	case d.kicks[q] != nil:
		d.drain(q)
	default:
		d.notify(q)
	}
}
