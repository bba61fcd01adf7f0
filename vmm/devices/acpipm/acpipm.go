// Package acpipm emulates the ACPI PM1a event and control register blocks
// a FADT names, as fixed hardware (ACPI 6.5, section 4.8.3):
//
//   - the event block: PM1_STS (16 bits at offset 0, write 1 to clear) and
//     PM1_EN (16 bits at offset 2);
//   - the control block: PM1_CNT (16 bits at offset 0).
//
// They are two inventory entries; Event and Control return their devices.
// Accesses of 1, 2 or 4 bytes touch the bytes they cover, little-endian.
//
// The machine is always in ACPI mode: PM1_CNT reads with SCI_EN set, so the
// guest needs no SMI command port. Writing SLP_EN with SLP_TYP equal to
// SlpTypS5 powers the machine off; other sleep states are not supported and
// are reported to an optional callback. PowerButton raises the fixed power
// button event, which a guest's ACPI driver turns into an orderly shutdown.
package acpipm

import (
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
)

// SlpTypS5 is the SLP_TYP value that requests soft-off (S5). The DSDT's \_S5
// package must carry it.
const SlpTypS5 = 5

// PM1 status and enable bits.
const (
	stsTimer  = 1 << 0
	stsGBL    = 1 << 5
	stsPwrBtn = 1 << 8
	stsSlpBtn = 1 << 9
	stsRTC    = 1 << 10

	enMask = stsTimer | stsGBL | stsPwrBtn | stsSlpBtn | stsRTC // writable PM1_EN bits
)

// PM1 control bits.
const (
	cntSCIEn     = 1 << 0
	cntBMRld     = 1 << 1
	cntGblRls    = 1 << 2
	cntSlpTypSft = 10
	cntSlpTyp    = 7 << cntSlpTypSft
	cntSlpEn     = 1 << 13

	cntStored = cntBMRld | cntSlpTyp // bits that read back as written
)

// Config holds the callbacks of the PM block. They are called from the
// vCPU thread that wrote PM1_CNT, without the device's lock held.
type Config struct {
	// PowerOff is called when the guest enters S5.
	PowerOff func()
	// Sleep, if not nil, is called with the SLP_TYP of any other sleep
	// request, which is otherwise ignored.
	Sleep func(slpTyp uint8)
}

// PM is the PM1a register set. It is safe for concurrent use.
type PM struct {
	mu    sync.Mutex
	sci   irq.Line
	cfg   Config
	sts   uint16
	en    uint16
	cnt   uint16
	level bool
}

// New returns the PM1a registers, raising sci (which may be nil) for
// enabled events.
func New(sci irq.Line, cfg Config) *PM {
	return &PM{sci: sci, cfg: cfg, cnt: cntSCIEn}
}

// Event returns the device for the PM1a event block entry.
func (p *PM) Event() bus.Device { return event{p} }

// Control returns the device for the PM1a control block entry.
func (p *PM) Control() bus.Device { return control{p} }

// PowerButton reports a press of the fixed-feature power button.
func (p *PM) PowerButton() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sts |= stsPwrBtn
	p.update()
}

func (p *PM) update() {
	level := p.sts&p.en != 0 && p.cnt&cntSCIEn != 0
	if level == p.level {
		return
	}
	p.level = level
	if p.sci != nil {
		p.sci.SetLevel(level)
	}
}

type event struct{ p *PM }

func (e event) Read(offset uint64, data []byte) {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	regs := uint32(e.p.sts) | uint32(e.p.en)<<16
	for i := range data {
		data[i] = 0xff
		if o := offset + uint64(i); o < 4 {
			data[i] = byte(regs >> (8 * o))
		}
	}
}

func (e event) Write(offset uint64, data []byte) {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	for i, v := range data {
		switch o := offset + uint64(i); o {
		case 0, 1:
			e.p.sts &^= uint16(v) << (8 * o) // write 1 to clear
		case 2, 3:
			sh := 8 * (o - 2)
			e.p.en = e.p.en&^(0xff<<sh) | (uint16(v)<<sh)&enMask
		}
	}
	e.p.update()
}

type control struct{ p *PM }

func (c control) Read(offset uint64, data []byte) {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if o := offset + uint64(i); o < 2 {
			data[i] = byte(c.p.cnt >> (8 * o))
		}
	}
}

func (c control) Write(offset uint64, data []byte) {
	p := c.p
	p.mu.Lock()
	v := p.cnt
	for i, b := range data {
		if o := offset + uint64(i); o < 2 {
			v = v&^(0xff<<(8*o)) | uint16(b)<<(8*o)
		}
	}
	// SCI_EN stays set; GBL_RLS and SLP_EN are write-only triggers.
	p.cnt = v&cntStored | cntSCIEn
	typ := uint8((v & cntSlpTyp) >> cntSlpTypSft)
	sleep := v&cntSlpEn != 0
	p.update()
	p.mu.Unlock()
	if !sleep {
		return
	}
	if typ == SlpTypS5 {
		if p.cfg.PowerOff != nil {
			p.cfg.PowerOff()
		}
	} else if p.cfg.Sleep != nil {
		p.cfg.Sleep(typ)
	}
}

// State is the PM1a register state, for snapshots.
type State struct {
	Status  uint16 `json:"status"`
	Enable  uint16 `json:"enable"`
	Control uint16 `json:"control"`
}

// State returns the register state.
func (p *PM) State() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return State{Status: p.sts, Enable: p.en, Control: p.cnt}
}

// SetState loads register state and updates the SCI line.
func (p *PM) SetState(s State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sts, p.en, p.cnt = s.Status, s.Enable, s.Control|cntSCIEn
	p.update()
}
