package machine

import (
	"errors"
	"fmt"
	stdnet "net"
	"os"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/blk"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/console"
	vnet "github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/net"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// Disk is a virtio-blk disk on a raw image file.
type Disk struct {
	File     *os.File // the machine does not close it
	ReadOnly bool
	ID       string // the serial number the guest reads (GET_ID)
}

// NIC is the virtio-net device.
type NIC struct {
	MAC  stdnet.HardwareAddr // nil: a random locally administered address
	Link vnet.Link           // nil: disconnected (the build); attach at resume
}

// Host bridge identity: an Intel 440FX host bridge, which every PC OS and
// SeaBIOS know, so that configuration mechanism #1 passes the OS's sanity
// check (a host bridge at 00.0).
const (
	bridgeVendor = 0x8086
	bridgeDevice = 0x1237
	bridgeClass  = 0x060000
	bridgePAM    = 0x59 // PAM0-6, seven registers
)

// pciFunction is a virtio device in a PCI slot.
type pciFunction struct {
	id   inventory.ID
	slot int
	dev  *virtio.PCIDevice
}

// pciDevices creates the PCI host, its bridge function and the virtio
// devices the profile and configuration ask for, and adds the host's bus
// devices (configuration ports and BAR window), and attaches the boot
// set's PCI functions. A machine booting a kernel places the BARs, as
// firmware would; one booting firmware leaves that to it; a restored one
// takes them from the snapshot.
func (m *Machine) pciDevices(devs deviceSet, boot bool) error {
	if !m.offersEntry(inventory.PCIWindow) {
		if len(m.cfg.Disks) > 0 || m.cfg.NIC != nil {
			return fmt.Errorf("%w: profile %v has no PCI, so no disks or NIC", ErrInvalid, m.cfg.Profile)
		}
		return nil
	}
	win := inventory.MustGet(inventory.PCIWindow)
	logf := func(err error) { m.cfg.Log.Printf("pci: %v", err) }
	m.pci = pci.NewHost(win.Base, win.Size, logf)
	bridge, err := pci.NewEndpoint(pci.Header{Vendor: bridgeVendor, Device: bridgeDevice, Class: bridgeClass}, [6]pci.BAR{}, nil)
	if err != nil {
		return err
	}
	// PAM0-6: the BIOS makes its shadow RAM below 1 MiB writable with
	// them. They are stored, and change nothing: that RAM is always
	// writable here.
	if err := bridge.AddRegisters(pci.Register{Off: bridgePAM, Value: make([]byte, 7),
		Writable: []byte{0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33}}); err != nil {
		return err
	}
	m.bridge = bridge
	if err := m.pci.Attach(int(inventory.MustGet(inventory.PCIHostBridge).Base), bridge, nil); err != nil {
		return err
	}
	for _, e := range m.entries() {
		if e.Space != inventory.SpacePCI || e.Class != inventory.Legacy {
			continue
		}
		var f *pci.Endpoint
		if m.boot != nil {
			f = m.boot.Functions()[e.ID]
		}
		if f == nil {
			return fmt.Errorf("inventory entry %v is in profile %v but no function serves it", e, m.cfg.Profile)
		}
		if err := m.pci.Attach(int(e.Base), f, nil); err != nil {
			return err
		}
	}
	sink := msiSink{m.vm}
	add := func(id inventory.ID, i int, b virtio.Backend) error {
		e := inventory.MustGet(id)
		if uint64(i) >= e.Size {
			return fmt.Errorf("%w: %s takes at most %d devices", ErrInvalid, id, e.Size)
		}
		slot := int(e.Base) + i
		d, err := virtio.NewPCIDevice(b, m.mem, sink, func(err error) { m.cfg.Log.Printf("%s (slot %d): %v", id, slot, err) })
		if err != nil {
			return err
		}
		m.close = append(m.close, d.Close)
		if err := m.pci.Attach(slot, d.Endpoint, pciBARs{d}); err != nil {
			return err
		}
		if boot && m.cfg.Firmware == nil {
			// Without firmware to place them, BAR 0 of slot n goes
			// at n × its size from the window's base: naturally
			// aligned, and the slots' BARs never overlap.
			if err := m.pci.Place(slot, 0, win.Base+uint64(slot)*virtio.BARSize); err != nil {
				return err
			}
		}
		m.functions = append(m.functions, pciFunction{id: id, slot: slot, dev: d})
		return nil
	}
	if err := add(inventory.VirtioEntropy, 0, virtio.Entropy{}); err != nil {
		return err
	}
	var in = m.cfg.ConsoleIn
	if m.input != inputVirtio {
		in = nil
	}
	if err := add(inventory.VirtioConsole, 0, console.New(in, m.consoleOut(inputVirtio))); err != nil {
		return err
	}
	for i, d := range m.cfg.Disks {
		b, err := blk.New(d.File, blk.Options{ReadOnly: d.ReadOnly, ID: d.ID, Log: func(err error) { m.cfg.Log.Printf("disk %d: %v", i, err) }})
		if err != nil {
			return fmt.Errorf("%w: disk %d: %w", ErrInvalid, i, err)
		}
		if err := add(inventory.VirtioBlock, i, b); err != nil {
			return err
		}
	}
	if n := m.cfg.NIC; n != nil {
		nic, err := vnet.New(vnet.Options{MAC: n.MAC, Log: func(err error) { m.cfg.Log.Printf("nic: %v", err) }})
		if err != nil {
			return fmt.Errorf("%w: NIC: %w", ErrInvalid, err)
		}
		if err := add(inventory.VirtioNet, 0, nic); err != nil {
			return err
		}
		m.nic = nic
		if boot && n.Link != nil {
			if err := nic.Attach(n.Link); err != nil {
				return err
			}
		}
	}
	devs[inventory.PCIConfigAddress] = m.pci.AddressRegister()
	devs[inventory.PCIConfigData] = m.pci.DataWindow()
	devs[inventory.PCIWindow] = m.pci.Window()
	return m.catchDoorbells()
}

// pciBARs adapts a virtio device to the host's BAR handler.
type pciBARs struct{ d *virtio.PCIDevice }

func (b pciBARs) ReadBAR(bar int, off uint64, data []byte)  { b.d.ReadBAR(bar, off, data) }
func (b pciBARs) WriteBAR(bar int, off uint64, data []byte) { b.d.WriteBAR(bar, off, data) }

// msiSink delivers MSI-X messages with KVM_SIGNAL_MSI, whichever irqchip
// the profile has.
type msiSink struct{ vm *kvm.VM }

func (s msiSink) SignalMSI(lo, hi, data uint32) error {
	_, err := s.vm.SignalMSI(kvm.MSI{AddressLo: lo, AddressHi: hi, Data: data})
	return err
}

// Console input goes to one console: the one the guest's /dev/console
// is, which Linux takes from the last console= argument.
type consoleInput string

const (
	inputSerial consoleInput = "serial"
	inputVirtio consoleInput = "virtio"
)

// inputFor returns the console a guest booted with cmdline reads from.
func inputFor(cmdline string) consoleInput {
	in := inputSerial
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, "console="); ok {
			in = inputSerial
			if strings.HasPrefix(v, "hvc") {
				in = inputVirtio
			}
		}
	}
	return in
}

// PCIState is the PCI host's and the virtio devices' saved state.
type PCIState struct {
	Address uint32        `json:"address"` // configuration address register
	Bridge  []byte        `json:"bridge"`  // the host bridge's configuration space
	Devices []VirtioState `json:"devices"`
	Input   consoleInput  `json:"console_input"`
}

// VirtioState is one virtio device's state, in its slot.
type VirtioState struct {
	ID    inventory.ID  `json:"id"`
	Slot  int           `json:"slot"`
	State *virtio.State `json:"state"`
}

// pausePCI holds the virtio devices' own work, after the vCPUs stopped.
func (m *Machine) pausePCI() {
	for _, f := range m.functions {
		f.dev.Pause()
	}
}

// resumePCI lets the virtio devices work again.
func (m *Machine) resumePCI() {
	for _, f := range m.functions {
		f.dev.Resume()
	}
}

// savePCI saves the PCI state of a paused machine.
func (m *Machine) savePCI() (*PCIState, error) {
	if m.pci == nil {
		return nil, nil
	}
	st := &PCIState{Address: m.pci.Address(), Bridge: m.bridge.Config(), Input: m.input}
	for _, f := range m.functions {
		s, err := f.dev.State()
		if err != nil {
			return nil, fmt.Errorf("%s in slot %d: %w", f.id, f.slot, err)
		}
		st.Devices = append(st.Devices, VirtioState{ID: f.id, Slot: f.slot, State: s})
	}
	return st, nil
}

// restorePCI restores saved PCI state into the machine's devices, which
// must be the same devices in the same slots: the guest's drivers are
// bound to them.
func (m *Machine) restorePCI(st *PCIState) error {
	if st == nil {
		if m.pci != nil {
			return errors.New("the snapshot has no PCI devices; it was captured by an older bunkerbuild")
		}
		return nil
	}
	if m.pci == nil {
		return fmt.Errorf("the snapshot has PCI devices and profile %v has none", m.cfg.Profile)
	}
	if err := m.bridge.SetConfig(st.Bridge); err != nil {
		return fmt.Errorf("host bridge: %w", err)
	}
	m.pci.SetAddress(st.Address)
	if len(st.Devices) != len(m.functions) {
		return fmt.Errorf("the snapshot has %s; this machine was given %s", describe(st.Devices), describeFunctions(m.functions))
	}
	for i, f := range m.functions {
		s := st.Devices[i]
		if s.ID != f.id || s.Slot != f.slot || s.State == nil {
			return fmt.Errorf("the snapshot has %s; this machine was given %s", describe(st.Devices), describeFunctions(m.functions))
		}
		if err := f.dev.SetState(s.State); err != nil {
			return fmt.Errorf("%s in slot %d: %w", f.id, f.slot, err)
		}
	}
	m.pci.Remap()
	return nil
}

func describe(ds []VirtioState) string {
	var s []string
	for _, d := range ds {
		s = append(s, fmt.Sprintf("%s in slot %d", d.ID, d.Slot))
	}
	return strings.Join(s, ", ")
}

func describeFunctions(fs []pciFunction) string {
	var ds []VirtioState
	for _, f := range fs {
		ds = append(ds, VirtioState{ID: f.id, Slot: f.slot})
	}
	return describe(ds)
}

// startPCI runs once as a restored machine starts: the devices resume,
// the NIC gets its link (the driver hears of it now that its vCPUs can),
// and requests made while the machine was captured are served.
func (m *Machine) startPCI() error {
	m.resumePCI()
	if m.nic != nil && m.cfg.NIC.Link != nil {
		if err := m.nic.Attach(m.cfg.NIC.Link); err != nil {
			return fmt.Errorf("NIC: %w", err)
		}
	}
	for _, f := range m.functions {
		f.dev.Kick()
	}
	return nil
}
