// Package legacy makes the boot-time PC devices of the full profile: the
// i8042 (for its reset line), the CMOS/RTC and the POST port; and, for a
// machine booting through firmware, the platform a BIOS needs: fw_cfg,
// the ROM's write side, the A20 gate and the PIIX3 ISA bridge. The PIC and
// PIT are KVM's. Only binaries that boot guests import it, and pass New
// to machine.SetBootDevices; see vmm/devices/bootset.
package legacy

import (
	"errors"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/bootset"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/cmos"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/i8042"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy/post"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/pci"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

type set struct {
	devs  map[inventory.ID]bus.Device
	funcs map[inventory.ID]*pci.Endpoint
	kbc   *i8042.Controller // nil without the i8042
	close []func() error
}

// New makes the legacy devices ctx's profile offers.
func New(ctx bootset.Context) (bootset.Set, error) {
	s := &set{devs: map[inventory.ID]bus.Device{}, funcs: map[inventory.ID]*pci.Endpoint{}}
	if ctx.Offers(inventory.I8042Data) {
		s.kbc = i8042.New(ctx.IRQLine(inventory.I8042Data), ctx.Reset)
		s.devs[inventory.I8042Data] = s.kbc.Data()
		s.devs[inventory.I8042Cmd] = s.kbc.Command()
	}
	if ctx.Offers(inventory.CMOS) {
		cfg := cmos.Config{LowMem: ctx.LowMem, HighMem: ctx.HighMem, CPUs: ctx.CPUs}
		if ctx.Firmware != nil {
			cfg.BootOrder = []cmos.BootDevice{cmos.BootDisk}
		}
		rtc := cmos.New(ctx.IRQLine(inventory.CMOS), cfg)
		s.close = append(s.close, rtc.Close)
		s.devs[inventory.CMOS] = rtc
	}
	if ctx.Offers(inventory.POST) {
		s.devs[inventory.POST] = post.New()
	}
	if ctx.Offers(inventory.FwCfg) {
		if err := s.firmwareDevices(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *set) Devices() map[inventory.ID]bus.Device { return s.devs }

func (s *set) Functions() map[inventory.ID]*pci.Endpoint { return s.funcs }

func (s *set) Quiescent() (bool, string, string) {
	if s.kbc != nil {
		if ok, why := s.kbc.Quiescent(); !ok {
			return false, "i8042", why
		}
	}
	return true, "", ""
}

func (s *set) Close() error {
	var errs []error
	for _, f := range s.close {
		errs = append(errs, f())
	}
	return errors.Join(errs...)
}
