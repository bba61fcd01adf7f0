package machine

import (
	"encoding/binary"
	"io"
	"log"
	"slices"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/ioapic"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

type nopSink struct{}

func (nopSink) SetRoutes([]ioapic.Route) error { return nil }
func (nopSink) Fire(int) error                 { return nil }

// devicesOnly builds a machine's buses and devices for profile p without
// KVM: interrupts go nowhere.
func devicesOnly(t testing.TB, p inventory.Profile, serial bool) *Machine {
	t.Helper()
	logger := log.New(io.Discard, "", 0)
	m := &Machine{
		cfg:   Config{Profile: p, Policy: bus.Deny, Memory: 512 << 20, CPUs: 2, Log: logger, SerialConsole: serial},
		raise: func(uint32, bool) error { return nil },
	}
	m.pio = bus.New(inventory.SpacePIO, bus.Deny, logger)
	m.mmio = bus.New(inventory.SpaceMMIO, bus.Deny, logger)
	m.msr = bus.New(inventory.SpaceMSR, bus.Deny, logger)
	if !m.offers(inventory.KernelPIC) {
		m.ioapic = ioapic.New(nopSink{}, uint32(inventory.MustGet(inventory.LAPICMem).Base), nil)
	}
	if err := m.attachDevices(); err != nil {
		t.Fatal(err)
	}
	if err := m.registerMSRs(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// Every entry a profile offers is registered on its bus, and nothing else.
func TestRegistrationFollowsInventory(t *testing.T) {
	for _, tc := range []struct {
		p      inventory.Profile
		serial bool
	}{{inventory.Full, false}, {inventory.Minimal, false}, {inventory.Minimal, true}} {
		m := devicesOnly(t, tc.p, tc.serial)
		want := map[inventory.ID]bool{}
		var pciWant []inventory.ID
		for _, e := range m.entries() {
			switch {
			case e.Space == inventory.SpacePCI:
				pciWant = append(pciWant, e.ID)
			case !e.InKernel || e.Space == inventory.SpaceMSR:
				want[e.ID] = true
			}
		}
		// PCI functions sit behind the host bridge's entries: the bridge
		// itself, and each virtio device the machine was given in its
		// inventory slot (entropy and console always; no disk or NIC here).
		pciGot := []inventory.ID{inventory.PCIHostBridge}
		for _, f := range m.functions {
			e := inventory.MustGet(f.id)
			if uint64(f.slot) < e.Base || uint64(f.slot) >= e.End() {
				t.Errorf("%v: %s in slot %d, outside its inventory slots %v", tc.p, f.id, f.slot, e)
			}
			pciGot = append(pciGot, f.id)
		}
		for _, id := range []inventory.ID{inventory.PCIHostBridge, inventory.VirtioEntropy, inventory.VirtioConsole} {
			if !slices.Contains(pciWant, id) || !slices.Contains(pciGot, id) {
				t.Errorf("%v: PCI function %s offered %v, attached %v", tc.p, id, slices.Contains(pciWant, id), slices.Contains(pciGot, id))
			}
		}
		got := map[inventory.ID]bool{}
		for _, b := range m.Buses() {
			for _, s := range b.Stats() {
				if got[s.Entry.ID] {
					t.Errorf("%v: %s registered twice", tc.p, s.Entry.ID)
				}
				got[s.Entry.ID] = true
				if !want[s.Entry.ID] {
					t.Errorf("%v (serial %v): %s is registered but not offered", tc.p, tc.serial, s.Entry.ID)
				}
			}
		}
		for id := range want {
			if !got[id] {
				t.Errorf("%v (serial %v): %s is offered but not registered", tc.p, tc.serial, id)
			}
		}
		if com1 := got[inventory.COM1]; com1 != (tc.p == inventory.Full || tc.serial) {
			t.Errorf("%v (serial %v): COM1 registered = %v", tc.p, tc.serial, com1)
		}
	}
}

// inEntries reports whether [addr, addr+size) lies inside one of the
// machine's entries in space.
func inEntries(m *Machine, space inventory.Space, addr, size uint64) bool {
	for _, e := range m.entries() {
		if e.Space == space && e.Contains(addr) && addr+size <= e.End() && (!e.InKernel || space == inventory.SpaceMSR) {
			return true
		}
	}
	return false
}

// FuzzDispatch drives random port, MMIO and MSR accesses at each profile's
// buses: no access panics, and every access outside the profile's
// inventory is denied (reads return all ones) and counted.
func FuzzDispatch(f *testing.F) {
	f.Add([]byte{0, 0x60, 0x00, 0, 1, 0xfe})                      // i8042 port, by offset
	f.Add([]byte{1, 0x00, 0x00, 0xc0, 0xfe, 0x11, 4, 1, 2, 3, 4}) // MMIO at the IOAPIC
	f.Add([]byte{2, 0x1b, 0, 0, 0, 0, 8})
	// One machine per profile for the whole run: device state carries
	// from one input to the next, as it does in a guest.
	machines := map[inventory.Profile]*Machine{}
	for _, p := range []inventory.Profile{inventory.Full, inventory.Minimal} {
		machines[p] = devicesOnly(f, p, false)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, p := range []inventory.Profile{inventory.Full, inventory.Minimal} {
			m := machines[p]
			buses := m.Buses()
			for len(in) >= 7 {
				kind := in[0] % 3
				addr := uint64(binary.LittleEndian.Uint32(in[1:5]))
				size := []uint64{1, 2, 4, 8}[in[5]%4]
				write := in[6]&1 == 1
				in = in[7:]
				b := buses[kind]
				space := b.Space()
				if space == inventory.SpacePIO {
					addr &= 0xffff
					size = min(size, 4)
				}
				before := b.DeniedTotal()
				data := make([]byte, size)
				for i := range data {
					data[i] = 0x5a
				}
				var err error
				switch {
				case space == inventory.SpaceMSR:
					_, err = b.Account(addr, write)
				case write:
					err = b.Write(addr, data)
				default:
					err = b.Read(addr, data)
				}
				if err != nil {
					t.Fatalf("%v: deny policy returned %v", p, err)
				}
				listed := inEntries(m, space, addr, size)
				if space == inventory.SpaceMSR {
					listed = inEntries(m, space, addr, 1)
				}
				denied := b.DeniedTotal() > before
				if listed == denied {
					t.Fatalf("%v: %s access at %#x size %d: listed %v, denied %v", p, space, addr, size, listed, denied)
				}
				if denied && !write && space != inventory.SpaceMSR {
					for _, d := range data {
						if d != 0xff {
							t.Fatalf("%v: denied read at %s %#x returned %x, want all ones", p, space, addr, data)
						}
					}
				}
			}
		}
	})
}

func init() { SetBootDevices(legacy.New) }
