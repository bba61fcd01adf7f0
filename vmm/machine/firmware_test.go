package machine

import (
	"bytes"
	"encoding/binary"
	"io"
	"log"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// firmwareMachine builds, without KVM, the devices and memory of a
// machine booting rom through firmware.
func firmwareMachine(t *testing.T, rom []byte) *Machine {
	t.Helper()
	logger := log.New(io.Discard, "", 0)
	cfg := Config{Profile: inventory.FullFirmware, Policy: bus.Deny, Memory: 512 << 20, CPUs: 2, Log: logger, Firmware: rom}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	m, err := newMachine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	m.raise = func(uint32, bool) error { return nil }
	if err := m.loadFirmware(); err != nil {
		t.Fatal(err)
	}
	m.pio = bus.New(inventory.SpacePIO, bus.Deny, logger)
	m.mmio = bus.New(inventory.SpaceMMIO, bus.Deny, logger)
	m.msr = bus.New(inventory.SpaceMSR, bus.Deny, logger)
	if err := m.attachDevices(); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFirmwarePlatform(t *testing.T) {
	rom := make([]byte, 256<<10)
	for i := range rom {
		rom[i] = byte(i * 7)
	}
	m := firmwareMachine(t, rom)

	// The image's last 128 KiB is in RAM below 1 MiB.
	low := make([]byte, 128<<10)
	if err := m.mem.ReadAt(low, memory.ShadowStart); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(low, rom[len(rom)-len(low):]) {
		t.Error("RAM at 0xE0000 does not hold the end of the BIOS image")
	}

	addr := inventory.MustGet(inventory.PCIConfigAddress).Base
	data := inventory.MustGet(inventory.PCIConfigData).Base
	config := func(slot int, off uint8) uint32 {
		m.pio.Write(addr, binary.LittleEndian.AppendUint32(nil, 1<<31|uint32(slot)<<11|uint32(off)))
		b := make([]byte, 4)
		m.pio.Read(data, b)
		return binary.LittleEndian.Uint32(b)
	}
	// The PIIX3 answers in its inventory slot.
	if got := config(int(inventory.MustGet(inventory.ISABridge).Base), 0); got != 0x70008086 {
		t.Errorf("ISA bridge vendor/device %#x, want 0x70008086", got)
	}
	// The PIIX4 PM function shows the inventory's PM1 block as its base.
	pmSlot := int(inventory.MustGet(inventory.PMFunction).Base)
	if got := config(pmSlot, 0); got != 0x71138086 {
		t.Errorf("PM function vendor/device %#x, want 0x71138086", got)
	}
	if got, want := config(pmSlot, 0x40), uint32(inventory.MustGet(inventory.ACPIEvt).Base)|1; got != want {
		t.Errorf("PM base register %#x, want %#x", got, want)
	}
	// What SeaBIOS writes to the host bridge's PAM registers sticks.
	m.pio.Write(addr, binary.LittleEndian.AppendUint32(nil, 1<<31|0x5c))
	m.pio.Write(data, []byte{0x33, 0x33, 0x33, 0x33})
	if got := config(0, 0x5c); got != 0x33333333 {
		t.Errorf("PAM3-6 read %#x after writing 0x33s", got)
	}
	// fw_cfg answers with its signature.
	fw := inventory.MustGet(inventory.FwCfg).Base
	m.pio.Write(fw, []byte{0, 0})
	sig := make([]byte, 4)
	for i := range sig {
		m.pio.Read(fw+1, sig[i:i+1])
	}
	if string(sig) != "QEMU" {
		t.Errorf("fw_cfg signature %q", sig)
	}
	// Firmware places the BARs: a firmware boot leaves them unplaced.
	if n := m.pci.Window().Decoded(); n != 0 {
		t.Errorf("%d BARs decoded before the firmware ran", n)
	}
}

func TestFirmwareConfigRefused(t *testing.T) {
	rom := make([]byte, 128<<10)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"kernel too", Config{Profile: inventory.FullFirmware, Firmware: rom, Kernel: bytes.NewReader([]byte{1})}},
		{"full profile", Config{Profile: inventory.Full, Firmware: rom}},
		{"minimal profile", Config{Profile: inventory.Minimal, Firmware: rom}},
		{"odd size", Config{Profile: inventory.FullFirmware, Firmware: make([]byte, 100<<10)}},
		{"too big", Config{Profile: inventory.FullFirmware, Firmware: make([]byte, 512<<10)}},
		{"empty", Config{Profile: inventory.FullFirmware, Firmware: []byte{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Memory, tc.cfg.CPUs = 512<<20, 1
			if err := tc.cfg.check(); err == nil {
				t.Error("accepted")
			}
		})
	}
}
