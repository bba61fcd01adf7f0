package piix

import "testing"

func TestISABridge(t *testing.T) {
	e, err := NewISABridge()
	if err != nil {
		t.Fatal(err)
	}
	read := func(off uint8) byte {
		b := []byte{0}
		e.ReadConfig(off, b)
		return b[0]
	}
	id := make([]byte, 4)
	e.ReadConfig(0, id)
	if id[0] != 0x86 || id[1] != 0x80 || id[2] != 0x00 || id[3] != 0x70 {
		t.Errorf("vendor/device = % x, want 86 80 00 70", id)
	}
	if got := []byte{read(0x0b), read(0x0a)}; got[0] != 0x06 || got[1] != 0x01 {
		t.Errorf("class %02x subclass %02x, want a PCI-to-ISA bridge (06 01)", got[0], got[1])
	}
	// What SeaBIOS's PIIX setup writes: PIRQ A-D to IRQs 10, 10, 11, 11.
	tests := []struct {
		off         uint8
		write, want byte
	}{
		{0x60, 0x0a, 0x0a},
		{0x61, 0x0a, 0x0a},
		{0x62, 0x0b, 0x0b},
		{0x63, 0xff, 0x8f}, // reserved bits 6-4 stay clear
		{0x82, 0xff, 0x0f},
		{0x00, 0xff, 0x86}, // the identity is read-only
		{0x90, 0xff, 0x00}, // no register there
	}
	for _, tc := range tests {
		e.WriteConfig(tc.off, []byte{tc.write})
		if got := read(tc.off); got != tc.want {
			t.Errorf("after writing %#02x to %#02x it reads %#02x, want %#02x", tc.write, tc.off, got, tc.want)
		}
	}
}

func TestPMFunction(t *testing.T) {
	if _, err := NewPMFunction(0x610); err == nil {
		t.Error("a misaligned PM base was accepted")
	}
	e, err := NewPMFunction(0x600)
	if err != nil {
		t.Fatal(err)
	}
	read32 := func(off uint8) uint32 {
		b := make([]byte, 4)
		e.ReadConfig(off, b)
		return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	}
	if got := read32(0); got != 0x71138086 {
		t.Errorf("vendor/device %#x, want 0x71138086", got)
	}
	// What SeaBIOS's piix4_pm_setup writes, which must not move the block.
	e.WriteConfig(0x40, []byte{0x01, 0xb0, 0, 0})
	e.WriteConfig(0x80, []byte{0x00})
	e.WriteConfig(0x90, []byte{0x01, 0xb1, 0, 0})
	tests := []struct {
		off  uint8
		want uint32
		why  string
	}{
		{0x40, 0x601, "PM base at the inventory's block, I/O space"},
		{0x58, 1 << 25, "APMC_EN: SMM already set up"},
		{0x80, 1, "PM I/O enabled"},
		{0x90, 1, "no SMBus"},
	}
	for _, tc := range tests {
		if got := read32(tc.off); got != tc.want {
			t.Errorf("config %#x = %#x, want %#x (%s)", tc.off, got, tc.want, tc.why)
		}
	}
}
