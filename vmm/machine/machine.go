// Package machine assembles a virtual machine from KVM, guest memory, the
// buses and the devices of one inventory profile, boots a Linux kernel on
// it and runs its vCPUs.
package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"runtime"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/boot/linux"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/acpipm"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/bootset"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/ioapic"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/serial"
	vnet "github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/net"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
	"github.com/bunkerbuild/bunkerbuild/vmm/vcpu"
)

// MaxCPUs bounds the vCPU count: APIC IDs and the MADT use 8-bit IDs.
const MaxCPUs = 64

// Image is a file the guest boots from, read straight into guest memory:
// an *os.File wrapped in an io.SectionReader, or a *bytes.Reader.
type Image interface {
	io.ReaderAt
	Size() int64
}

// ErrInvalid marks errors caused by bad input: the configuration, the
// kernel or the initrd.
var ErrInvalid = errors.New("invalid machine configuration")

// Config describes a machine.
type Config struct {
	Profile inventory.Profile
	Policy  bus.Policy // for accesses outside the profile's inventory
	Memory  uint64     // bytes of guest RAM
	CPUs    int

	Kernel  Image // bzImage
	Initrd  Image // optional
	Cmdline string

	// Firmware, instead of Kernel, boots the machine through a BIOS image
	// (SeaBIOS), which boots the first disk. The profile must then be
	// inventory.FullFirmware. Cmdline may still give the command line the
	// disk's boot loader passes, if known: the consoles follow its last
	// console=.
	Firmware []byte

	// ConsoleIn and ConsoleOut are the host side of the guest's console:
	// the serial port or virtio-console's hvc0, whichever the guest's
	// /dev/console is (the last console= of the command line; the
	// snapshot remembers it). A nil ConsoleIn reads nothing.
	// OtherConsoleOut, if set, receives the other console's output: the
	// kernel writes its messages to every console, and two consoles on
	// one writer would interleave mid-line.
	ConsoleIn       io.Reader
	ConsoleOut      io.Writer
	OtherConsoleOut io.Writer

	// Log receives the VMM's own messages (denied accesses, ...).
	Log *log.Logger

	// SerialConsole adds COM1 as the console to a profile without it (the
	// minimal profile); the surface report shows it as an addition.
	SerialConsole bool

	// Handoff says the machine will be captured and resumed on the
	// minimal profile: its ACPI tables then tell the guest not to use the
	// i8042 and the RTC, which vanish at the handoff (see acpi.Config).
	Handoff bool

	// Disks are the virtio-blk disks, in slot order; NIC, if set, adds
	// the virtio-net device. A restored machine must be given the devices
	// its snapshot has.
	Disks []Disk
	NIC   *NIC

	// RecordMSRs sends every guest MSR access through userspace and
	// counts it, to learn which MSRs a guest uses. Slow; for discovery.
	RecordMSRs bool
}

func (c *Config) check() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	check := c.checkKernel
	if c.Firmware != nil {
		check = c.checkFirmware
	}
	if err := check(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func (c *Config) validate() error {
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return fmt.Errorf("vCPU count %d out of range (1 to %d)", c.CPUs, MaxCPUs)
	}
	if c.Memory < memory.MinSize || c.Memory > memory.MaxSize {
		return fmt.Errorf("memory size %d MiB out of range (%d MiB to %d GiB)", c.Memory>>20, memory.MinSize>>20, memory.MaxSize>>30)
	}
	if c.Profile != inventory.Full && c.Profile != inventory.Minimal && c.Profile != inventory.FullFirmware {
		return fmt.Errorf("device profile %v: want full, full+firmware or minimal", c.Profile)
	}
	return nil
}

// checkKernel checks the kernel image of a machine that boots one.
func (c *Config) checkKernel() error {
	if c.Kernel == nil || c.Kernel.Size() == 0 {
		return errors.New("no kernel image")
	}
	// Refuse a file that is not a bzImage before touching KVM; Load checks
	// the rest against the guest's memory.
	if _, err := linux.ParseHeader(c.Kernel); err != nil {
		return err
	}
	return nil
}

// Exit is how a machine's run ended.
type Exit int

const (
	// ExitPoweroff: the guest powered off.
	ExitPoweroff Exit = iota
	// ExitReboot: the guest rebooted (or triple-faulted).
	ExitReboot
	// ExitStopped: the host stopped the machine (context or Stop).
	ExitStopped
)

func (e Exit) String() string {
	switch e {
	case ExitPoweroff:
		return "poweroff"
	case ExitReboot:
		return "reboot"
	}
	return "stopped"
}

// Machine is a configured VM, ready to Run once.
type Machine struct {
	cfg  Config
	sys  *kvm.System
	vm   *kvm.VM
	mem  *memory.Guest
	pio  *bus.Bus
	mmio *bus.Bus
	msr  *bus.Bus

	ioapic *ioapic.IOAPIC // the minimal profile's userspace IOAPIC
	pm     *acpipm.PM
	uart   *serial.UART // nil without a serial console
	boot   bootset.Set  // the boot-time devices; nil on the minimal profile
	// firmware is what a firmware boot tells the BIOS; nil otherwise.
	firmware *bootset.Firmware

	pci       *pci.Host
	bridge    *pci.Endpoint
	functions []pciFunction
	nic       *vnet.Device
	input     consoleInput // the console that gets ConsoleIn
	restored  bool         // created by Restore: the devices start in Run
	// raise sets the level of a GSI of KVM's irqchip (vm.IRQLine).
	raise func(gsi uint32, high bool) error
	cpus  []*vcpu.VCPU
	close []func() error // device and resource cleanups, run in reverse

	exitOnce sync.Once
	exit     Exit // set by the first guest event

	mu     sync.Mutex // guards closed against Stop racing Close
	closed bool
}

// New creates the VM, its devices and vCPUs, and loads the kernel.
func New(cfg Config) (_ *Machine, err error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	m, err := newMachine(cfg)
	if err != nil {
		return nil, err
	}
	m.input = inputFor(cfg.Cmdline)
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	// Load the guest before touching KVM, so that bad input is reported
	// as such on any machine. A firmware boot starts the vCPUs as a PC
	// does, at the reset vector.
	var entry *bootEntry
	if cfg.Firmware != nil {
		err = m.loadFirmware()
	} else {
		entry, err = m.loadGuest()
	}
	if err != nil {
		return nil, err
	}
	if err = m.createVM(); err != nil {
		return nil, err
	}
	if err = m.createVCPUs(entry, nil); err != nil {
		return nil, err
	}
	return m, nil
}

// newMachine maps guest RAM for cfg.
func newMachine(cfg Config) (*Machine, error) {
	if cfg.Log == nil {
		cfg.Log = log.New(io.Discard, "", 0)
	}
	m := &Machine{cfg: cfg, exit: ExitStopped}
	var err error
	if m.mem, err = memory.New(cfg.Memory); err != nil {
		return nil, err
	}
	m.close = append(m.close, m.mem.Close)
	return m, nil
}

// createVM creates the KVM VM with its interrupt controllers, memory
// slots, buses, MSR filter and devices.
func (m *Machine) createVM() error {
	var err error
	if m.sys, err = kvm.Open(); err != nil {
		return err
	}
	m.close = append(m.close, m.sys.Close)
	if max := m.sys.CheckExtension(kvm.CapMaxVCPUs); max > 0 && m.cfg.CPUs > max {
		return fmt.Errorf("vCPU count %d exceeds this host's KVM limit of %d", m.cfg.CPUs, max)
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return err
	}
	m.close = append(m.close, m.vm.Close)
	if err = m.vm.SetIdentityMapAddr(memory.KVMIdentityMap); err != nil {
		return err
	}
	if err = m.vm.SetTSSAddr(memory.KVMTSS); err != nil {
		return err
	}
	if err = m.createIRQChip(); err != nil {
		return err
	}
	regions, maps := m.mem.Regions()
	for i, r := range regions {
		if err = m.vm.SetUserMemoryRegion(uint32(i), r.GPA, maps[i]); err != nil {
			return err
		}
	}
	if err = m.mapFirmware(uint32(len(regions))); err != nil {
		return err
	}
	m.pio = bus.New(inventory.SpacePIO, m.cfg.Policy, m.cfg.Log)
	m.mmio = bus.New(inventory.SpaceMMIO, m.cfg.Policy, m.cfg.Log)
	m.msr = bus.New(inventory.SpaceMSR, m.cfg.Policy, m.cfg.Log)
	if err = m.setupMSRs(); err != nil {
		return err
	}
	return m.attachDevices()
}

// createIRQChip sets up the interrupt controllers of the profile: KVM's
// PIC pair, IOAPIC and PIT where the profile offers the PIC; otherwise a
// split irqchip, with the local APICs in KVM and the IOAPIC in userspace.
func (m *Machine) createIRQChip() error {
	if !m.offers(inventory.KernelPIC) {
		if m.sys.CheckExtension(kvm.CapSplitIRQChip) == 0 {
			return fmt.Errorf("profile %v needs KVM_CAP_SPLIT_IRQCHIP, which this host's KVM lacks", m.cfg.Profile)
		}
		if err := m.vm.EnableCap(kvm.CapSplitIRQChip, ioapic.Pins); err != nil {
			return err
		}
		msiBase := uint32(inventory.MustGet(inventory.LAPICMem).Base)
		m.ioapic = ioapic.New(splitSink{m.vm}, msiBase, func(err error) { m.cfg.Log.Printf("ioapic: %v", err) })
		return nil
	}
	if err := m.vm.CreateIRQChip(); err != nil {
		return err
	}
	m.raise = m.vm.IRQLine
	if m.offers(inventory.KernelPIT) {
		return m.vm.CreatePIT2(kvm.PITSpeakerDummy)
	}
	return nil
}

// splitSink delivers the userspace IOAPIC's interrupts through KVM: each
// pin is a GSI routed to its MSI, so that KVM also reports the EOIs of
// level-triggered ones.
type splitSink struct{ vm *kvm.VM }

func (s splitSink) SetRoutes(routes []ioapic.Route) error {
	var rs []kvm.MSIRoute
	for _, r := range routes {
		if !r.Masked {
			rs = append(rs, kvm.MSIRoute{GSI: uint32(r.Pin), MSI: kvm.MSI{AddressLo: r.AddressLo, Data: r.Data}})
		}
	}
	return s.vm.SetGSIRouting(rs)
}

func (s splitSink) Fire(pin int) error { return s.vm.IRQLine(uint32(pin), true) }

// consoleOut returns where console c's output goes.
func (m *Machine) consoleOut(c consoleInput) io.Writer {
	w := m.cfg.OtherConsoleOut
	if c == m.input {
		w = m.cfg.ConsoleOut
	}
	if w == nil {
		return io.Discard
	}
	return w
}

// offers reports whether the machine's profile includes entry id.
func (m *Machine) offers(id inventory.ID) bool {
	return inventory.MustGet(id).In(m.cfg.Profile)
}

// Memory returns guest RAM.
func (m *Machine) Memory() *memory.Guest { return m.mem }

// Buses returns the port, MMIO and MSR buses, for access accounting.
func (m *Machine) Buses() []*bus.Bus { return []*bus.Bus{m.pio, m.mmio, m.msr} }

// guestExit records the first guest-initiated end of the run and stops
// every vCPU. Devices call it from vCPU threads.
func (m *Machine) guestExit(e Exit) {
	m.exitOnce.Do(func() { m.exit = e })
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	for _, c := range m.cpus {
		c.Stop()
	}
}

// Run runs every vCPU until the guest powers off or reboots, ctx is done,
// or a vCPU fails. It returns how the run ended.
func (m *Machine) Run(ctx context.Context) (Exit, error) {
	reserveProcs(len(m.cpus))
	if m.restored {
		if err := m.startPCI(); err != nil {
			return ExitStopped, err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(m.cpus))
	for i, c := range m.cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, err := c.Run(ctx)
			switch {
			case err != nil:
				errs[i] = err
				m.guestExit(ExitStopped)
			case ev == vcpu.Shutdown:
				m.guestExit(ExitPoweroff)
			case ev == vcpu.Reset:
				m.guestExit(ExitReboot)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return ExitStopped, err
	}
	m.exitOnce.Do(func() {}) // a host stop leaves ExitStopped
	return m.exit, nil
}

// reserveProcs raises GOMAXPROCS by the vCPU count. A vCPU thread spends
// its life in KVM_RUN, a system call during which its goroutine keeps
// its P until sysmon takes it back; with as many Ps as CPUs, the device
// goroutines (a tap's receive side, a transmit queue, console input) and
// the network poller would wait for sysmon, whose period grows to 10 ms
// when it finds nothing to do: every packet's round trip would cost that.
func reserveProcs(vcpus int) {
	procsMu.Lock()
	defer procsMu.Unlock()
	if want := runtime.NumCPU() + vcpus; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

var procsMu sync.Mutex

// Pause parks every vCPU at a clean point.
func (m *Machine) Pause() {
	for _, c := range m.cpus {
		c.Pause()
	}
	m.pausePCI()
}

// Resume lets paused vCPUs run again.
func (m *Machine) Resume() {
	m.resumePCI()
	for _, c := range m.cpus {
		c.Resume()
	}
}

// Stop makes Run return ExitStopped.
func (m *Machine) Stop() { m.guestExit(ExitStopped) }

// OnClose adds f to what Close releases, before the machine's own
// resources: the files a caller opened for the machine's devices, say.
func (m *Machine) OnClose(f func() error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.close = append(m.close, f)
}

// Close releases the VM, its devices and guest memory. Run must have
// returned.
func (m *Machine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var errs []error
	for i := len(m.close) - 1; i >= 0; i-- {
		errs = append(errs, m.close[i]())
	}
	m.close = nil
	return errors.Join(errs...)
}
