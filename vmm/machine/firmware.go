package machine

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/boot/acpi"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/bootset"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// shadowSize is how much of the BIOS image's end a PC aliases below
// 1 MiB, from memory.ShadowStart.
const shadowSize = memory.ACPIEnd - memory.ShadowStart

// checkFirmware checks the BIOS image and the machine it boots.
func (c *Config) checkFirmware() error {
	rom := inventory.MustGet(inventory.BIOSROM)
	n := uint64(len(c.Firmware))
	switch {
	case c.Kernel != nil || c.Initrd != nil:
		return errors.New("a machine boots a kernel or firmware, not both")
	case c.Profile != inventory.FullFirmware:
		return fmt.Errorf("a firmware boot needs profile %v, not %v", inventory.FullFirmware, c.Profile)
	case n == 0 || n%(64<<10) != 0 || n > rom.Size:
		return fmt.Errorf("BIOS image of %d bytes: want a whole number of 64 KiB, at most %d KiB", n, rom.Size>>10)
	}
	return nil
}

// loadFirmware prepares a firmware boot: the end of the BIOS image in
// RAM below 1 MiB, where the CPU's first far jump lands, and what fw_cfg
// tells the BIOS.
func (m *Machine) loadFirmware() error {
	rom := m.cfg.Firmware
	shadow := rom[len(rom)-int(min(uint64(len(rom)), shadowSize)):]
	if err := m.mem.WriteAt(shadow, memory.ACPIEnd-uint64(len(shadow))); err != nil {
		return fmt.Errorf("copy the BIOS below 1 MiB: %w", err)
	}
	loadable, err := acpi.Relocatable(m.acpiConfig())
	if err != nil {
		return fmt.Errorf("build ACPI tables: %w", err)
	}
	m.firmware = &bootset.Firmware{
		ROM:       rom,
		E820:      memory.FirmwareE820(m.cfg.Memory),
		ACPI:      loadable,
		BootOrder: m.bootOrder(),
	}
	return nil
}

// bootOrder lists the disks in slot order, as SeaBIOS names a
// virtio-blk function on the root bus (src/boot.c, bootprio_find_pci_device).
func (m *Machine) bootOrder() []string {
	blk := inventory.MustGet(inventory.VirtioBlock)
	var order []string
	for i := range m.cfg.Disks {
		order = append(order, fmt.Sprintf("/pci@i0cf8/*@%x", blk.Base+uint64(i)))
	}
	return order
}

// mapFirmware maps the BIOS image read-only in slot, ending where the
// inventory's ROM entry ends (4 GiB): writes exit to the entry's device.
func (m *Machine) mapFirmware(slot uint32) error {
	if m.cfg.Firmware == nil {
		return nil
	}
	if m.sys.CheckExtension(kvm.CapReadonlyMem) == 0 {
		return errors.New("a firmware boot needs KVM_CAP_READONLY_MEM, which this host's KVM lacks")
	}
	// KVM maps page-aligned host memory; an anonymous mapping is, and
	// stays mapped until Close.
	mem, err := unix.Mmap(-1, 0, len(m.cfg.Firmware), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map the BIOS image: %w", err)
	}
	m.close = append(m.close, func() error { return unix.Munmap(mem) })
	copy(mem, m.cfg.Firmware)
	return m.vm.SetReadOnlyMemoryRegion(slot, inventory.MustGet(inventory.BIOSROM).End()-uint64(len(mem)), mem)
}

// ReadFirmware reads a BIOS image file, refusing one larger than the
// inventory's ROM window before reading it.
func ReadFirmware(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	max := inventory.MustGet(inventory.BIOSROM).Size
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() <= 0 || uint64(st.Size()) > max {
		return nil, fmt.Errorf("BIOS image %s: %d bytes, want a regular file of at most %d KiB", path, st.Size(), max>>10)
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("BIOS image %s: %w", path, err)
	}
	return b, nil
}
