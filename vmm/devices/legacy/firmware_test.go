package legacy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/boot/acpi"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/bootset"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// ram is guest memory for fw_cfg DMA.
type ram []byte

func (r ram) ReadAt(b []byte, gpa uint64) error {
	if gpa > uint64(len(r)) || uint64(len(b)) > uint64(len(r))-gpa {
		return fmt.Errorf("%#x+%d outside RAM", gpa, len(b))
	}
	copy(b, r[gpa:])
	return nil
}

func (r ram) WriteAt(b []byte, gpa uint64) error {
	if gpa > uint64(len(r)) || uint64(len(b)) > uint64(len(r))-gpa {
		return fmt.Errorf("%#x+%d outside RAM", gpa, len(b))
	}
	copy(r[gpa:], b)
	return nil
}

func firmwareSet(t *testing.T, p inventory.Profile, fw *bootset.Firmware) bootset.Set {
	t.Helper()
	ctx := bootset.Context{
		Offers:   func(id inventory.ID) bool { return inventory.MustGet(id).In(p) },
		IRQLine:  func(inventory.ID) irq.Line { return nil },
		Reset:    func() {},
		LowMem:   512 << 20,
		CPUs:     3,
		Firmware: fw,
		Memory:   make(ram, 1<<20),
		Log:      func(err error) { t.Log(err) },
	}
	s, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// item reads a fw_cfg item through the selector and data ports.
func item(d bus.Device, key uint16, n int) []byte {
	d.Write(0, binary.LittleEndian.AppendUint16(nil, key))
	b := make([]byte, n)
	for i := range b {
		d.Read(1, b[i:i+1])
	}
	return b
}

// file finds a fw_cfg file by name in the directory and reads it.
func file(t *testing.T, d bus.Device, name string) []byte {
	t.Helper()
	count := binary.BigEndian.Uint32(item(d, 0x19, 4))
	dir := item(d, 0x19, 4+64*int(count))[4:]
	for i := 0; i < int(count); i++ {
		e := dir[64*i : 64*i+64]
		if string(bytes.TrimRight(e[8:], "\x00")) == name {
			return item(d, binary.BigEndian.Uint16(e[4:]), int(binary.BigEndian.Uint32(e[0:])))
		}
	}
	t.Fatalf("fw_cfg has no file %q", name)
	return nil
}

func TestFirmwareConfig(t *testing.T) {
	tables, err := acpi.Relocatable(acpi.ForProfile(inventory.FullFirmware, 3))
	if err != nil {
		t.Fatal(err)
	}
	rom := make([]byte, 256<<10)
	copy(rom[len(rom)-16:], "reset vector....")
	fw := &bootset.Firmware{ROM: rom, E820: memory.FirmwareE820(512 << 20), ACPI: tables,
		BootOrder: []string{"/pci@i0cf8/*@3", "/pci@i0cf8/*@4"}}
	s := firmwareSet(t, inventory.FullFirmware, fw)
	devs := s.Devices()
	for _, e := range inventory.For(inventory.FullFirmware) {
		if e.Class == inventory.Legacy && !e.InKernel && e.Space != inventory.SpacePCI && e.ID != inventory.ACPIEvt {
			if devs[e.ID] == nil {
				t.Errorf("no device for %s", e.ID)
			}
		}
	}
	for _, id := range []inventory.ID{inventory.ISABridge, inventory.PMFunction} {
		if s.Functions()[id] == nil {
			t.Errorf("no PCI function for %s", id)
		}
	}
	cfg := devs[inventory.FwCfg]
	if got := item(cfg, 0, 4); string(got) != "QEMU" {
		t.Fatalf("signature %q", got)
	}
	if got := binary.LittleEndian.Uint16(item(cfg, 0x05, 2)); got != 3 {
		t.Errorf("CPUs %d, want 3", got)
	}
	if got := file(t, cfg, "etc/e820"); len(got) != 20 || binary.LittleEndian.Uint64(got) != 0 ||
		binary.LittleEndian.Uint64(got[8:]) != 512<<20 || binary.LittleEndian.Uint32(got[16:]) != 1 {
		t.Errorf("etc/e820 = % x, want one entry: RAM from 0 for 512 MiB", got)
	}
	if got := string(file(t, cfg, "bootorder")); got != "/pci@i0cf8/*@3\n/pci@i0cf8/*@4\x00" {
		t.Errorf("bootorder %q", got)
	}
	com1 := inventory.MustGet(inventory.COM1).Base
	if got := binary.LittleEndian.Uint64(file(t, cfg, "etc/sercon-port")); got != com1 {
		t.Errorf("sercon-port %#x, want COM1 %#x", got, com1)
	}
	if got := file(t, cfg, "etc/acpi/tables"); !bytes.Equal(got, tables.Tables) {
		t.Error("etc/acpi/tables differs from the machine's tables")
	}
	loader := file(t, cfg, "etc/table-loader")
	if want := 2 + len(tables.Pointers) + len(tables.Checksums); len(loader) != 128*want {
		t.Errorf("table loader has %d bytes, want %d commands", len(loader), want)
	}
	if !strings.HasPrefix(string(loader[4:]), "etc/acpi/rsdp") {
		t.Errorf("the first loader command does not allocate the RSDP: % x", loader[:64])
	}

	// The ROM's write side drops writes; below the image it reads ones.
	r := devs[inventory.BIOSROM]
	size := inventory.MustGet(inventory.BIOSROM).Size
	b := make([]byte, 16)
	r.Read(size-16, b)
	if string(b) != "reset vector...." {
		t.Errorf("ROM end reads %q", b)
	}
	r.Write(size-16, []byte("xxxx"))
	r.Read(size-16, b)
	if string(b) != "reset vector...." {
		t.Errorf("a write changed the ROM: %q", b)
	}
}

func TestROMSmallImage(t *testing.T) {
	size := inventory.MustGet(inventory.BIOSROM).Size
	r := rom{image: bytes.Repeat([]byte{0xaa}, 128<<10), size: size}
	b := make([]byte, 2)
	r.Read(size-128<<10-1, b)
	if b[0] != 0xff || b[1] != 0xaa {
		t.Errorf("around the image's start: % x, want ff aa", b)
	}
}

func TestFullProfileHasNoFirmwareDevices(t *testing.T) {
	s := firmwareSet(t, inventory.Full, nil)
	for _, id := range []inventory.ID{inventory.FwCfg, inventory.FwCfgDMA, inventory.BIOSROM, inventory.A20Gate} {
		if s.Devices()[id] != nil {
			t.Errorf("the full profile without firmware has %s", id)
		}
	}
	if len(s.Functions()) != 0 {
		t.Errorf("the full profile without firmware has PCI functions %v", s.Functions())
	}
}
