package legacy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/vmm/boot/acpi"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/bootset"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/fwcfg"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/piix"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/port92"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

// firmwareDevices adds the platform a BIOS needs: the ROM's write side,
// fw_cfg with what the machine tells the BIOS, the A20 gate, the PIIX3
// ISA bridge and the PIIX4 power-management function.
func (s *set) firmwareDevices(ctx bootset.Context) error {
	fw := ctx.Firmware
	if fw == nil {
		return fmt.Errorf("profile offers %s but the machine boots no firmware", inventory.FwCfg)
	}
	s.devs[inventory.BIOSROM] = rom{image: fw.ROM, size: inventory.MustGet(inventory.BIOSROM).Size}
	s.devs[inventory.A20Gate] = port92.New(ctx.Reset)

	cfg, err := firmwareConfig(ctx)
	if err != nil {
		return fmt.Errorf("fw_cfg: %w", err)
	}
	s.devs[inventory.FwCfg] = cfg.Ports()
	s.devs[inventory.FwCfgDMA] = cfg.DMA()

	isa, err := piix.NewISABridge()
	if err != nil {
		return err
	}
	s.funcs[inventory.ISABridge] = isa
	pm, err := piix.NewPMFunction(uint16(inventory.MustGet(inventory.ACPIEvt).Base))
	if err != nil {
		return err
	}
	s.funcs[inventory.PMFunction] = pm
	return nil
}

// bootFailWait is how long SeaBIOS waits after finding nothing to boot
// before it resets the machine, in milliseconds: a build fails at once.
const bootFailWait = 0

// fwFile is a fw_cfg file.
type fwFile struct {
	name string
	data []byte
}

// firmwareConfig fills fw_cfg with what SeaBIOS reads.
func firmwareConfig(ctx bootset.Context) (*fwcfg.Device, error) {
	fw := ctx.Firmware
	d := fwcfg.New(ctx.Memory, ctx.Log)
	err := errors.Join(
		d.SetCPUs(ctx.CPUs, ctx.CPUs),
		d.AddUint64(fwcfg.KeyRAMSize, ctx.LowMem+ctx.HighMem),
		d.AddUint16(fwcfg.KeyBootMenu, 0),
	)
	if err != nil {
		return nil, err
	}
	files := []fwFile{
		{"etc/e820", fwcfg.E820Table(fw.E820)},
		{"etc/boot-fail-wait", binary.LittleEndian.AppendUint32(nil, bootFailWait)},
	}
	if len(fw.BootOrder) > 0 {
		files = append(files, fwFile{"bootorder", append([]byte(strings.Join(fw.BootOrder, "\n")), 0)})
	}
	if ctx.Offers(inventory.COM1) {
		// SeaBIOS mirrors its screen output, and the boot loader's, to
		// this serial port: the machine has no display.
		files = append(files, fwFile{"etc/sercon-port", binary.LittleEndian.AppendUint64(nil, inventory.MustGet(inventory.COM1).Base)})
	}
	if fw.ACPI != nil {
		acpiFiles, err := acpiLoader(fw.ACPI)
		if err != nil {
			return nil, err
		}
		files = append(files, acpiFiles...)
	}
	for _, f := range files {
		if err := d.AddFile(f.name, f.data); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// acpiLoader returns the files that offer the machine's ACPI tables
// through the table loader: the RSDP in the F segment, where an OS scans
// for it, and the other tables in high memory, linked by the firmware
// where it put them.
func acpiLoader(t *acpi.Loadable) ([]fwFile, error) {
	var l fwcfg.Loader
	for _, f := range []acpi.File{acpi.RSDPFile, acpi.TablesFile} {
		if err := l.Allocate(f.Name(), f.Align(), fwcfg.Zone(f.Zone())); err != nil {
			return nil, err
		}
	}
	for _, p := range t.Pointers {
		if err := l.AddPointer(p.File.Name(), p.Target.Name(), p.Offset, p.Size); err != nil {
			return nil, err
		}
	}
	for _, c := range t.Checksums {
		if err := l.AddChecksum(c.File.Name(), c.Offset, c.Start, c.Length); err != nil {
			return nil, err
		}
	}
	return []fwFile{{acpi.RSDPFile.Name(), t.RSDP}, {acpi.TablesFile.Name(), t.Tables}, {fwcfg.LoaderFile, l.Bytes()}}, nil
}

// rom is the write side of the BIOS image KVM maps read-only at the top
// of the 32-bit address space: writes exit here and are dropped (the bus
// counts them). Reads reach it only below the image, where nothing is.
type rom struct {
	image []byte
	size  uint64 // of the inventory entry, which ends at 4 GiB
}

func (r rom) Read(offset uint64, data []byte) {
	start := r.size - uint64(len(r.image)) // the image ends where the entry does
	for i := range data {
		o := offset + uint64(i)
		data[i] = 0xff
		if o >= start && o-start < uint64(len(r.image)) {
			data[i] = r.image[o-start]
		}
	}
}

func (rom) Write(uint64, []byte) {}
