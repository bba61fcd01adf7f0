package cmos

import (
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

type line struct {
	mu    sync.Mutex
	level bool
}

func (l *line) SetLevel(high bool) { l.mu.Lock(); l.level = high; l.mu.Unlock() }
func (l *line) get() bool          { l.mu.Lock(); defer l.mu.Unlock(); return l.level }

// Saturday 2024-03-09 15:04:05.5 UTC.
var t0 = time.Date(2024, 3, 9, 15, 4, 5, 5e8, time.UTC)

func newRTC(t *testing.T, cfg Config) (*CMOS, *fakeClock, *line) {
	clk := &fakeClock{t: t0}
	l := new(line)
	if cfg.Clock == nil {
		cfg.Clock = clk.now
	}
	c := New(l, cfg)
	t.Cleanup(func() { c.Close() })
	return c, clk, l
}

func get(c *CMOS, idx byte) byte {
	c.Write(portIndex, []byte{idx})
	var b [1]byte
	c.Read(portData, b[:])
	return b[0]
}

func set(c *CMOS, idx, v byte) {
	c.Write(portIndex, []byte{idx})
	c.Write(portData, []byte{v})
}

var timeRegs = []byte{regSec, regMin, regHour, regWday, regMday, regMon, regYear, regCentury}

func readTime(c *CMOS) [8]byte {
	var out [8]byte
	for i, r := range timeRegs {
		out[i] = get(c, r)
	}
	return out
}

func TestTimeFormats(t *testing.T) {
	tests := []struct {
		name string
		b    byte
		at   time.Time
		want [8]byte // sec min hour wday mday mon year century
	}{
		{"BCD 24h", 0x02, t0, [8]byte{0x05, 0x04, 0x15, 0x07, 0x09, 0x03, 0x24, 0x20}},
		{"binary 24h", 0x06, t0, [8]byte{5, 4, 15, 7, 9, 3, 24, 20}},
		{"BCD 12h pm", 0x00, t0, [8]byte{0x05, 0x04, 0x83, 0x07, 0x09, 0x03, 0x24, 0x20}},
		{"binary 12h pm", 0x04, t0, [8]byte{5, 4, 0x83, 7, 9, 3, 24, 20}},
		{"BCD 12h midnight", 0x00, time.Date(1999, 12, 31, 0, 59, 58, 0, time.UTC), [8]byte{0x58, 0x59, 0x12, 0x06, 0x31, 0x12, 0x99, 0x19}},
		{"BCD 12h noon", 0x00, time.Date(2000, 1, 2, 12, 0, 0, 0, time.UTC), [8]byte{0, 0, 0x92, 0x01, 0x02, 0x01, 0x00, 0x20}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at := tc.at
			c, _, _ := newRTC(t, Config{Clock: func() time.Time { return at }})
			set(c, regB, tc.b)
			if got := readTime(c); got != tc.want {
				t.Errorf("time registers % x, want % x", got, tc.want)
			}
		})
	}
}

func TestSetTime(t *testing.T) {
	tests := []struct {
		name  string
		b     byte
		write map[byte]byte
		want  time.Time
	}{
		{"BCD with SET", 0x02, map[byte]byte{regSec: 0x30, regMin: 0x45, regHour: 0x23, regMday: 0x28, regMon: 0x02, regYear: 0x31, regCentury: 0x20},
			time.Date(2031, 2, 28, 23, 45, 30, 0, time.UTC)},
		{"binary 12h with SET", 0x04, map[byte]byte{regSec: 1, regMin: 2, regHour: 0x80 | 12, regMday: 1, regMon: 1, regYear: 99, regCentury: 19},
			time.Date(1999, 1, 1, 12, 2, 1, 0, time.UTC)},
		{"12h midnight", 0x00, map[byte]byte{regHour: 0x12}, time.Date(2024, 3, 9, 0, 4, 5, 0, time.UTC)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, clk, _ := newRTC(t, Config{})
			set(c, regB, tc.b|bSET)
			for _, r := range timeRegs { // keep the order stable
				if v, ok := tc.write[r]; ok {
					set(c, r, v)
				}
			}
			clk.add(10 * time.Second) // SET holds the clock still
			set(c, regB, tc.b)
			got := c.guest(clk.now())
			if !got.Equal(tc.want) {
				t.Fatalf("guest time %v, want %v", got, tc.want)
			}
			clk.add(2 * time.Second)
			set(c, regB, tc.b|bBinary|b24Hour)
			if s, want := get(c, regSec), byte(tc.want.Second()+2); s != want {
				t.Fatalf("seconds %d two seconds later, want %d", s, want)
			}
		})
	}
}

func TestSetFreezesReads(t *testing.T) {
	c, clk, _ := newRTC(t, Config{})
	set(c, regB, 0x82|bUIE)
	if b := get(c, regB); b != 0x82 {
		t.Fatalf("register B %02x: SET must clear UIE", b)
	}
	before := readTime(c)
	clk.add(3 * time.Second)
	if after := readTime(c); after != before {
		t.Fatalf("time moved while SET: % x -> % x", before, after)
	}
}

func TestWriteWithoutSet(t *testing.T) {
	c, clk, _ := newRTC(t, Config{})
	set(c, regMin, 0x30)
	clk.add(time.Second)
	if m, s := get(c, regMin), get(c, regSec); m != 0x30 || s != 0x06 {
		t.Fatalf("min %02x sec %02x, want 30 06", m, s)
	}
}

func TestStatusRegisters(t *testing.T) {
	c, clk, _ := newRTC(t, Config{})
	if a, b, d := get(c, regA), get(c, regB), get(c, regD); a != 0x26 || b != 0x02 || d != 0x80 {
		t.Fatalf("A %02x B %02x D %02x", a, b, d)
	}
	set(c, regA, 0xff)
	if a := get(c, regA); a != 0x7f {
		t.Fatalf("A %02x after writing ff: UIP must be read-only", a)
	}
	set(c, regA, 0x26)
	clk.add(time.Second/2 - 100*time.Microsecond) // 100 µs before the second ends
	if a := get(c, regA); a&aUIP == 0 {
		t.Fatal("UIP clear just before the update")
	}
	clk.add(200 * time.Microsecond)
	if a := get(c, regA); a&aUIP != 0 {
		t.Fatal("UIP set after the update")
	}
	set(c, regD, 0)
	set(c, regC, 0xff)
	if d, cc := get(c, regD), get(c, regC); d != 0x80 || cc&^(cUF|cPF) != 0 {
		t.Fatalf("D %02x C %02x after writes", d, cc)
	}
}

func TestInterrupts(t *testing.T) {
	tests := []struct {
		name    string
		a, b    byte
		alarm   [3]byte // sec, min, hour alarm registers
		step    time.Duration
		wantC   byte
		wantIRQ bool
	}{
		{"update ended", 0x20, 0x02 | bUIE, [3]byte{}, time.Second, cIRQF | cUF, true},
		{"update flag without enable", 0x20, 0x02, [3]byte{}, time.Second, cUF, false},
		{"periodic 2 Hz", 0x2f, 0x02 | bPIE, [3]byte{}, 500 * time.Millisecond, cIRQF | cPF | cUF, true},
		{"periodic not yet", 0x2f, 0x02 | bPIE, [3]byte{}, 100 * time.Millisecond, 0, false},
		{"alarm match", 0x20, 0x02 | bAIE, [3]byte{0x06, 0x04, 0x15}, time.Second, cIRQF | cAF | cUF, true},
		{"alarm don't care", 0x20, 0x02 | bAIE, [3]byte{0xc0, 0xff, 0xc0}, time.Second, cIRQF | cAF | cUF, true},
		{"alarm mismatch", 0x20, 0x02 | bAIE, [3]byte{0x07, 0x04, 0x15}, time.Second, cUF, false},
		{"no update while SET", 0x20, 0x82, [3]byte{}, time.Second, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, clk, l := newRTC(t, Config{})
			set(c, regSecAlarm, tc.alarm[0])
			set(c, regMinAlarm, tc.alarm[1])
			set(c, regHourAlarm, tc.alarm[2])
			set(c, regA, tc.a)
			set(c, regB, tc.b)
			clk.add(tc.step)
			c.mu.Lock()
			c.advance(clk.now()) // what the goroutine does when its timer fires
			c.mu.Unlock()
			if got := l.get(); got != tc.wantIRQ {
				t.Fatalf("line %v, want %v", got, tc.wantIRQ)
			}
			if got := get(c, regC); got != tc.wantC {
				t.Fatalf("register C %02x, want %02x", got, tc.wantC)
			}
			if l.get() || get(c, regC) != 0 {
				t.Fatal("reading C did not clear it and lower the line")
			}
		})
	}
}

// TestGoroutine checks interrupts arrive by themselves with the real clock
// and stop with Close.
func TestGoroutine(t *testing.T) {
	l := new(line)
	c := New(l, Config{})
	set(c, regB, 0x02|bPIE) // 1024 Hz
	deadline := time.Now().Add(2 * time.Second)
	for !l.get() {
		if time.Now().After(deadline) {
			t.Fatal("no periodic interrupt")
		}
		time.Sleep(time.Millisecond)
	}
	if get(c, regC)&(cIRQF|cPF) != cIRQF|cPF {
		t.Fatal("interrupt without PF")
	}
	c.Close()
	c.Close()
}

func TestNVRAM(t *testing.T) {
	c, _, _ := newRTC(t, Config{})
	for _, idx := range []byte{0x0e, 0x40, 0x7f} {
		set(c, idx, idx^0x5a)
	}
	for _, idx := range []byte{0x0e, 0x40, 0x7f} {
		if v := get(c, idx); v != idx^0x5a {
			t.Errorf("NVRAM %#x = %#x", idx, v)
		}
	}
	// Bit 7 of the index masks NMIs and does not select a register.
	c.Write(portIndex, []byte{0x80 | 0x40})
	var b [1]byte
	c.Read(portData, b[:])
	if b[0] != 0x40^0x5a {
		t.Fatalf("index with NMI bit read %#x", b[0])
	}
	// A 16-bit write sets the index and the data at once.
	c.Write(portIndex, []byte{0x41, 0x99})
	if v := get(c, 0x41); v != 0x99 {
		t.Fatalf("16-bit write stored %#x", v)
	}
	var w [2]byte
	c.Read(portIndex, w[:])
	if w != [2]byte{0xff, 0x99} {
		t.Fatalf("16-bit read % x", w)
	}
}

func TestMemoryFields(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	tests := []struct {
		name string
		cfg  Config
		want map[byte]byte
	}{
		{"64 MiB, 1 CPU", Config{LowMem: 64 * mib, CPUs: 1}, map[byte]byte{
			0x15: 0x80, 0x16: 0x02, 0x17: 0x00, 0x18: 0xfc, 0x30: 0x00, 0x31: 0xfc,
			0x34: 0x00, 0x35: 0x03, 0x5b: 0, 0x5c: 0, 0x5d: 0, 0x5f: 0}},
		{"3 GiB + 5 GiB, 4 CPUs", Config{LowMem: 3 * gib, HighMem: 5 * gib, CPUs: 4}, map[byte]byte{
			0x17: 0xff, 0x18: 0xff, 0x30: 0xff, 0x31: 0xff,
			0x34: 0x00, 0x35: 0xbf, 0x5b: 0x00, 0x5c: 0x40, 0x5d: 0x01, 0x5f: 3}},
		{"tiny", Config{LowMem: 512 << 10}, map[byte]byte{0x17: 0, 0x18: 0, 0x34: 0, 0x35: 0, 0x5f: 0}},
		{"huge high memory", Config{LowMem: 3 * gib, HighMem: 1 << 50}, map[byte]byte{0x5b: 0xff, 0x5c: 0xff, 0x5d: 0xff}},
		{"no boot order", Config{LowMem: 64 * mib}, map[byte]byte{0x3d: 0, 0x38: 0}},
		{"boot from disk", Config{LowMem: 64 * mib, BootOrder: []BootDevice{BootDisk}}, map[byte]byte{0x3d: 0x02, 0x38: 0}},
		{"disk, cdrom, network", Config{LowMem: 64 * mib, BootOrder: []BootDevice{BootDisk, BootCDROM, BootNet}}, map[byte]byte{0x3d: 0x32, 0x38: 0x40}},
		{"only three count", Config{LowMem: 64 * mib, BootOrder: []BootDevice{BootNet, BootNet, BootNet, BootDisk}}, map[byte]byte{0x3d: 0x44, 0x38: 0x40}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _, _ := newRTC(t, tc.cfg)
			for idx, want := range tc.want {
				if got := get(c, idx); got != want {
					t.Errorf("CMOS %#x = %#02x, want %#02x", idx, got, want)
				}
			}
		})
	}
}
