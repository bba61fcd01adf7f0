// Package cmos emulates the MC146818 real-time clock and its CMOS NVRAM,
// reached through an index register (offset 0) and a data register
// (offset 1). Bit 7 of the index, the NMI mask on PCs, is ignored.
//
// The clock is the host clock given in the Config plus an offset the guest
// changes by setting the time. Time registers are computed when read, in
// binary or BCD and 24- or 12-hour form as register B asks; while register
// B's SET bit is set they hold the guest's writes, and clearing SET starts
// the clock from them. UIP in register A is set only during the 244 µs
// before each second ends, so a guest waiting for it to clear never waits
// long. The divider bits of register A are stored but never stop the clock.
//
// Register C's flags are brought up to date whenever C is read, and by a
// goroutine that sleeps until the next event while an interrupt (update
// ended, periodic, alarm) is enabled in register B. The interrupt line is
// high while register C's IRQF is set; reading C clears it. Periodic rates
// faster than 1 kHz are delivered coalesced, at most once a millisecond.
//
// NVRAM bytes 0x0E-0x7F are plain storage, preset with the memory size,
// CPU count and boot order fields PC firmware reads (see Config).
package cmos

import (
	"sync"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
)

// Register offsets within the entry.
const (
	portIndex = 0
	portData  = 1
)

// CMOS register indexes.
const (
	regSec       = 0x00
	regSecAlarm  = 0x01
	regMin       = 0x02
	regMinAlarm  = 0x03
	regHour      = 0x04
	regHourAlarm = 0x05
	regWday      = 0x06
	regMday      = 0x07
	regMon       = 0x08
	regYear      = 0x09
	regA         = 0x0a
	regB         = 0x0b
	regC         = 0x0c
	regD         = 0x0d
	regCentury   = 0x32

	regBaseMem    = 0x15 // and 0x16: base memory in KiB
	regExtMem     = 0x17 // and 0x18: memory from 1 MiB, in KiB
	regExtMem2    = 0x30 // and 0x31: the same, where newer firmware reads it
	regMemAbove16 = 0x34 // and 0x35: memory from 16 MiB below 4 GiB, in 64 KiB
	regMemAbove4G = 0x5b // to 0x5d: memory from 4 GiB, in 64 KiB
	regCPUs       = 0x5f // CPU count minus one
	regBootFlag1  = 0x38 // bits 7-4: third boot device; bit 0: skip the boot-signature check
	regBootFlag2  = 0x3d // bits 3-0: first boot device, bits 7-4: second
)

// Boot devices of the boot-order registers, as SeaBIOS (src/boot.c) and
// Bochs-derived firmware read them.
const (
	BootNone   BootDevice = 0
	BootFloppy BootDevice = 1
	BootDisk   BootDevice = 2
	BootCDROM  BootDevice = 3
	BootNet    BootDevice = 4
)

// BootDevice is one entry of the CMOS boot order.
type BootDevice byte

const (
	aUIP      = 0x80
	aDefault  = 0x26 // 32.768 kHz time base, 1024 Hz periodic rate
	aRateMask = 0x0f

	bSET     = 0x80
	bPIE     = 0x40
	bAIE     = 0x20
	bUIE     = 0x10
	bBinary  = 0x04 // DM: binary, not BCD
	b24Hour  = 0x02
	bDefault = b24Hour
	bEnables = bPIE | bAIE | bUIE // line up with cPF, cAF and cUF

	cIRQF = 0x80
	cPF   = 0x40
	cAF   = 0x20
	cUF   = 0x10

	dVRT = 0x80 // valid RAM and time

	alarmDontCare = 0xc0
	hourPM        = 0x80 // 12-hour mode: afternoon
	indexNMI      = 0x80 // index bit 7: the PC's NMI mask

	// uipWindow is how long before each second's end UIP reads set.
	uipWindow = 244 * time.Microsecond
	// minSleep bounds how often the interrupt goroutine wakes.
	minSleep = time.Millisecond
)

// Config describes the machine to the firmware fields of the NVRAM.
type Config struct {
	// LowMem is the RAM below 4 GiB in bytes, counted from address 0
	// (the size of the first region memory.Regions returns).
	LowMem uint64
	// HighMem is the RAM from 4 GiB up in bytes (the second region's
	// size, or 0).
	HighMem uint64
	// CPUs is the number of vCPUs; values below 1 count as 1.
	CPUs int
	// BootOrder is the firmware's boot order, first device first, at
	// most three; firmware that reads fw_cfg's bootorder file prefers it.
	BootOrder []BootDevice
	// Clock returns the host's time; nil means time.Now. It is called
	// from vCPU threads and from the device's goroutine.
	Clock func() time.Time
}

// fields is a broken-down time as the clock registers hold it.
type fields struct {
	sec, min, hour, wday, mday, mon, year int
}

func fieldsOf(t time.Time) fields {
	t = t.UTC()
	return fields{t.Second(), t.Minute(), t.Hour(), int(t.Weekday()) + 1, t.Day(), int(t.Month()), t.Year()}
}

// time returns f as a time; the day of the week is implied by the date.
func (f fields) time() time.Time {
	return time.Date(f.year, time.Month(f.mon), f.mday, f.hour, f.min, f.sec, 0, time.UTC)
}

// CMOS is the RTC and NVRAM. It is safe for concurrent use.
type CMOS struct {
	mu     sync.Mutex
	line   irq.Line
	clock  func() time.Time
	index  byte
	ram    [128]byte
	offset time.Duration // guest time minus host time
	set    fields        // the time registers while SET is set
	regC   byte
	level  bool

	epoch    time.Time // host time at New: the phase of periodic interrupts
	lastHost time.Time // host time up to which flags are current
	lastSec  int64     // guest second up to which flags are current

	wake      chan struct{}
	done      chan struct{}
	exited    chan struct{}
	closeOnce sync.Once
}

var _ bus.Device = (*CMOS)(nil)

// New returns an RTC showing the host's UTC time that raises line for its
// interrupts, with NVRAM filled in from cfg. line may be nil. Call Close to
// stop its goroutine.
func New(line irq.Line, cfg Config) *CMOS {
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	c := &CMOS{
		line:   line,
		clock:  clock,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	c.ram[regA] = aDefault
	c.ram[regB] = bDefault
	c.setMemory(cfg)
	now := clock()
	c.epoch, c.lastHost, c.lastSec = now, now, now.Unix()
	go c.run()
	return c
}

func (c *CMOS) setMemory(cfg Config) {
	put16 := func(i int, v uint64) {
		v = min(v, 0xffff)
		c.ram[i], c.ram[i+1] = byte(v), byte(v>>8)
	}
	const kib, mib = 1 << 10, 1 << 20
	put16(regBaseMem, 640)
	var ext, above16 uint64
	if cfg.LowMem > 1*mib {
		ext = (cfg.LowMem - 1*mib) / kib
	}
	if cfg.LowMem > 16*mib {
		above16 = (cfg.LowMem - 16*mib) / (64 * kib)
	}
	put16(regExtMem, ext)
	put16(regExtMem2, ext)
	put16(regMemAbove16, above16)
	high := min(cfg.HighMem/(64*kib), 0xffffff)
	c.ram[regMemAbove4G], c.ram[regMemAbove4G+1], c.ram[regMemAbove4G+2] = byte(high), byte(high>>8), byte(high>>16)
	c.ram[regCPUs] = byte(min(max(cfg.CPUs, 1)-1, 0xff))
	var order [3]BootDevice
	copy(order[:], cfg.BootOrder)
	c.ram[regBootFlag2] = byte(order[0]&0xf) | byte(order[1]&0xf)<<4
	c.ram[regBootFlag1] = byte(order[2]&0xf) << 4
}

// Close stops the interrupt goroutine and waits for it to exit. It always
// returns nil.
func (c *CMOS) Close() error {
	c.closeOnce.Do(func() { close(c.done) })
	<-c.exited
	return nil
}

// Read serves a guest read; wider accesses read index then data, as an ISA
// bus splits them. The index register reads as an absent port.
func (c *CMOS) Read(offset uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if offset+uint64(i) == portData {
			data[i] = c.read(c.index)
		}
	}
}

// Write serves a guest write; wider accesses write index then data.
func (c *CMOS) Write(offset uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, v := range data {
		switch offset + uint64(i) {
		case portIndex:
			c.index = v &^ indexNMI // not ours to model
		case portData:
			c.write(c.index, v)
		}
	}
}

func (c *CMOS) guest(host time.Time) time.Time { return host.Add(c.offset) }

// current returns the time registers' contents.
func (c *CMOS) current() fields {
	if c.ram[regB]&bSET != 0 {
		return c.set
	}
	return fieldsOf(c.guest(c.clock()))
}

func (c *CMOS) read(idx byte) byte {
	switch idx {
	case regSec, regMin, regHour, regWday, regMday, regMon, regYear, regCentury:
		return c.encodeTime(idx, c.current())
	case regA:
		v := c.ram[regA]
		if c.ram[regB]&bSET == 0 && c.guest(c.clock()).Nanosecond() >= int(time.Second-uipWindow) {
			v |= aUIP
		}
		return v
	case regC:
		c.advance(c.clock())
		v := c.regC
		c.regC = 0
		c.update()
		return v
	case regD:
		return dVRT
	}
	return c.ram[idx]
}

func (c *CMOS) write(idx, v byte) {
	switch idx {
	case regSec, regMin, regHour, regWday, regMday, regMon, regYear, regCentury:
		c.writeTime(idx, v)
	case regA:
		now := c.clock()
		c.advance(now)
		c.ram[regA] = v &^ aUIP
		c.rearm(now)
	case regB:
		c.writeB(v)
	case regC, regD:
		// Read-only.
	default:
		c.ram[idx] = v
	}
}

func (c *CMOS) writeB(v byte) {
	now := c.clock()
	c.advance(now)
	old := c.ram[regB]
	if v&bSET != 0 {
		v &^= bUIE // setting SET clears UIE
		if old&bSET == 0 {
			c.set = fieldsOf(c.guest(now))
		}
	}
	c.ram[regB] = v
	if old&bSET != 0 && v&bSET == 0 {
		c.offset = c.set.time().Sub(now)
	}
	c.raise(0) // IRQF follows the enables
	c.rearm(now)
}

func (c *CMOS) writeTime(idx, v byte) {
	now := c.clock()
	c.advance(now)
	f := c.current()
	switch idx {
	case regSec:
		f.sec = c.decode(v)
	case regMin:
		f.min = c.decode(v)
	case regHour:
		f.hour = c.decodeHour(v)
	case regWday:
		f.wday = c.decode(v) // kept while SET; the date implies it after
	case regMday:
		f.mday = c.decode(v)
	case regMon:
		f.mon = c.decode(v)
	case regYear:
		f.year = f.year/100*100 + c.decode(v)
	case regCentury:
		f.year = c.decode(v)*100 + f.year%100
	}
	if c.ram[regB]&bSET != 0 {
		c.set = f
		return
	}
	c.offset = f.time().Sub(now)
	c.rearm(now)
}

// rearm restarts event tracking at now after the clock or the interrupt
// settings changed, and wakes the goroutine to recompute its deadline.
func (c *CMOS) rearm(now time.Time) {
	c.lastHost = now
	c.lastSec = c.guest(now).Unix()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *CMOS) encode(v int) byte {
	if c.ram[regB]&bBinary != 0 {
		return byte(v)
	}
	return byte((v/10%10)<<4 | v%10)
}

func (c *CMOS) decode(b byte) int {
	if c.ram[regB]&bBinary != 0 {
		return int(b)
	}
	return int(b>>4)*10 + int(b&0x0f)
}

func (c *CMOS) encodeHour(h int) byte {
	if c.ram[regB]&b24Hour != 0 {
		return c.encode(h)
	}
	h12 := h % 12
	if h12 == 0 {
		h12 = 12
	}
	v := c.encode(h12)
	if h >= 12 {
		v |= hourPM
	}
	return v
}

func (c *CMOS) decodeHour(v byte) int {
	if c.ram[regB]&b24Hour != 0 {
		return c.decode(v)
	}
	h := c.decode(v&0x7f) % 12
	if v&hourPM != 0 {
		h += 12
	}
	return h
}

func (c *CMOS) encodeTime(idx byte, f fields) byte {
	switch idx {
	case regSec:
		return c.encode(f.sec)
	case regMin:
		return c.encode(f.min)
	case regHour:
		return c.encodeHour(f.hour)
	case regWday:
		return c.encode(f.wday)
	case regMday:
		return c.encode(f.mday)
	case regMon:
		return c.encode(f.mon)
	case regYear:
		return c.encode(f.year % 100)
	}
	return c.encode(f.year / 100)
}

// period returns the periodic interrupt interval set in register A, or 0.
func (c *CMOS) period() time.Duration {
	rs := c.ram[regA] & aRateMask
	if rs == 0 {
		return 0
	}
	if rs < 3 {
		rs += 7 // rates 1 and 2 repeat 8 and 9 with a 32.768 kHz base
	}
	return time.Second * time.Duration(1<<(rs-1)) / 32768
}

func (c *CMOS) alarm(f fields) bool {
	match := func(alarm, now byte) bool { return alarm&alarmDontCare == alarmDontCare || alarm == now }
	return match(c.ram[regSecAlarm], c.encode(f.sec)) &&
		match(c.ram[regMinAlarm], c.encode(f.min)) &&
		match(c.ram[regHourAlarm], c.encodeHour(f.hour))
}

// advance sets register C's flags for the events between the last call and
// host: periodic ticks and, unless SET is set, second updates and alarms.
// An alarm is checked against the latest second only.
func (c *CMOS) advance(host time.Time) {
	if host.Before(c.lastHost) {
		return
	}
	var flags byte
	if p := c.period(); p > 0 && host.Sub(c.epoch)/p != c.lastHost.Sub(c.epoch)/p {
		flags |= cPF
	}
	g := c.guest(host)
	if sec := g.Unix(); sec != c.lastSec {
		c.lastSec = sec
		if c.ram[regB]&bSET == 0 {
			flags |= cUF
			if c.alarm(fieldsOf(g)) {
				flags |= cAF
			}
		}
	}
	c.lastHost = host
	c.raise(flags)
}

// raise adds flags to register C and sets IRQF if an enabled flag is set.
func (c *CMOS) raise(flags byte) {
	c.regC |= flags
	if c.regC&c.ram[regB]&bEnables != 0 {
		c.regC |= cIRQF
	}
	c.update()
}

func (c *CMOS) update() {
	level := c.regC&cIRQF != 0
	if level == c.level {
		return
	}
	c.level = level
	if c.line != nil {
		c.line.SetLevel(level)
	}
}

// next returns how long to sleep until the next enabled event, if any.
func (c *CMOS) next(host time.Time) (time.Duration, bool) {
	b := c.ram[regB]
	d := time.Duration(-1)
	if p := c.period(); b&bPIE != 0 && p > 0 {
		d = p - host.Sub(c.epoch)%p
	}
	if b&(bUIE|bAIE) != 0 && b&bSET == 0 {
		g := c.guest(host)
		if s := g.Truncate(time.Second).Add(time.Second).Sub(g); d < 0 || s < d {
			d = s
		}
	}
	if d < 0 {
		return 0, false
	}
	return max(d, minSleep), true
}

// run raises interrupts while they are enabled.
func (c *CMOS) run() {
	defer close(c.exited)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		c.mu.Lock()
		d, armed := c.next(c.clock())
		c.mu.Unlock()
		if armed {
			t.Reset(d)
		}
		select {
		case <-c.done:
			t.Stop()
			return
		case <-c.wake:
			t.Stop()
		case <-t.C:
			c.mu.Lock()
			c.advance(c.clock())
			c.mu.Unlock()
		}
	}
}
