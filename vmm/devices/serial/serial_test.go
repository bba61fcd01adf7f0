package serial

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// line records the levels a device drives.
type line struct {
	mu     sync.Mutex
	level  bool
	raises int
}

func (l *line) SetLevel(high bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if high && !l.level {
		l.raises++
	}
	l.level = high
}

func (l *line) get() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level, l.raises
}

func in(u *UART, off uint64) byte {
	var b [1]byte
	u.Read(off, b[:])
	return b[0]
}

func out(u *UART, off uint64, v byte) { u.Write(off, []byte{v}) }

// op is one guest access: a write of v, or a read expecting want.
type op struct {
	write bool
	off   uint64
	v     byte // value written, or value expected
	mask  byte // bits compared on read; 0 means all
}

func w(off uint64, v byte) op        { return op{write: true, off: off, v: v} }
func r(off uint64, want byte) op     { return op{off: off, v: want} }
func rm(off uint64, want, m byte) op { return op{off: off, v: want, mask: m} }

func run(t *testing.T, u *UART, ops []op) {
	t.Helper()
	for i, o := range ops {
		if o.write {
			out(u, o.off, o.v)
			continue
		}
		m := o.mask
		if m == 0 {
			m = 0xff
		}
		if got := in(u, o.off); got&m != o.v&m {
			t.Fatalf("op %d: read offset %d = %#02x, want %#02x (mask %#02x)", i, o.off, got, o.v, m)
		}
	}
}

func TestRegisters(t *testing.T) {
	tests := []struct {
		name string
		ops  []op
	}{
		{"reset state", []op{r(regIER, 0), r(regIIR, 0x01), r(regLCR, 0), r(regMCR, 0), r(regLSR, 0x60), r(regMSR, 0xb0), r(regSCR, 0)}},
		{"scratch", []op{w(regSCR, 0xa5), r(regSCR, 0xa5), w(regSCR, 0x5a), r(regSCR, 0x5a)}},
		{"IER keeps low nibble", []op{w(regIER, 0xff), r(regIER, 0x0f), w(regIER, 0x40), r(regIER, 0)}},
		{"divisor latch", []op{w(regLCR, 0x83), w(regData, 0x01), w(regIER, 0x02), r(regData, 0x01), r(regIER, 0x02),
			w(regLCR, 0x03), r(regIER, 0), r(regLCR, 0x03), w(regLCR, 0x80), r(regData, 0x01)}},
		{"FIFO bits in IIR", []op{w(regIIR, 0x01), r(regIIR, 0xc1), w(regIIR, 0x00), r(regIIR, 0x01)}},
		{"IIR ignores DLAB", []op{w(regIIR, 0x01), w(regLCR, 0x80), r(regIIR, 0xc1), w(regLCR, 0xbf), r(regIIR, 0xc1)}},
		{"MCR masks to 5 bits", []op{w(regMCR, 0xff), r(regMCR, 0x1f)}},
		{"THRE interrupt", []op{w(regIER, 0x02), r(regIIR, 0x02), r(regIIR, 0x01),
			w(regData, 'a'), r(regIIR, 0x02), w(regIER, 0), r(regIIR, 0x01)}},
		{"THRE re-asserted on enable", []op{w(regIER, 0x02), r(regIIR, 0x02), r(regIIR, 0x01), w(regIER, 0), w(regIER, 0x02), r(regIIR, 0x02)}},
		{"loopback modem lines", []op{w(regMCR, 0x1a), rm(regMSR, 0x90, 0xf0), w(regMCR, 0x15), rm(regMSR, 0x60, 0xf0), w(regMCR, 0), r(regMSR, 0xbd)}},
		{"MSR deltas clear on read", []op{w(regMCR, 0x10), r(regMSR, 0x0b), r(regMSR, 0x00)}},
		{"TERI on RI trailing edge", []op{w(regMCR, 0x14), r(regMSR, 0x4b), w(regMCR, 0x10), rm(regMSR, 0x04, 0x4f)}},
		{"loopback echo", []op{w(regMCR, 0x10), w(regData, 'z'), r(regLSR, 0x61), r(regData, 'z'), r(regLSR, 0x60)}},
		{"receive interrupt", []op{w(regMCR, 0x10), w(regIER, 0x01), r(regIIR, 0x01), w(regData, 'q'), r(regIIR, 0x04), r(regData, 'q'), r(regIIR, 0x01)}},
		{"timeout below trigger", []op{w(regIIR, 0xc1), w(regMCR, 0x10), w(regIER, 0x01), w(regData, 1), r(regIIR, 0xcc)}},
		{"overrun line status", []op{w(regMCR, 0x10), w(regIER, 0x05), w(regData, 1), w(regData, 2), r(regIIR, 0x06), r(regLSR, 0x63), r(regIIR, 0x04), r(regData, 1)}},
		{"FCR clears receive FIFO", []op{w(regIIR, 0x01), w(regMCR, 0x10), w(regData, 1), w(regIIR, 0x03), r(regLSR, 0x60)}},
		{"modem status interrupt", []op{w(regIER, 0x08), w(regMCR, 0x12), r(regIIR, 0x00), r(regMSR, 0x1a), r(regIIR, 0x01)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run(t, New(nil, nil, nil), tc.ops)
		})
	}
}

// TestLinuxAutoconfig replays the probe of Linux's 8250 autoconfig and
// checks each decision it bases on a read comes out as for a 16550A.
func TestLinuxAutoconfig(t *testing.T) {
	u := New(nil, nil, nil)
	// IER existence test.
	run(t, u, []op{w(regIER, 0), rm(regIER, 0, 0x0f), w(regIER, 0x0f), rm(regIER, 0x0f, 0x0f), w(regIER, 0)})
	// Loopback test: MSR & 0xf0 must be 0x90.
	run(t, u, []op{w(regMCR, 0x1a), rm(regMSR, 0x90, 0xf0), w(regMCR, 0)})
	// EFR write under LCR=0xbf lands in FCR; then the FIFO test.
	run(t, u, []op{w(regLCR, 0xbf), w(regIIR, 0), w(regLCR, 0), w(regIIR, 0x01), rm(regIIR, 0xc0, 0xc0)})
	// autoconfig_16550a: EFR reads under DLAB and 0xbf must be non-zero.
	if v := readWith(u, 0x80, regIIR); v == 0 {
		t.Fatal("EFR probe under LCR=0x80 read 0: would detect a 16650")
	}
	if v := readWith(u, 0xbf, regIIR); v == 0 {
		t.Fatal("EFR probe under LCR=0xbf read 0: would detect an EFR part")
	}
	// NatSemi probe: IIR bit 4 seen under LCR=0xe0 must not track MCR.LOOP.
	out(u, regLCR, 0)
	mcr := in(u, regMCR)
	s2 := readWith(u, 0xe0, regIIR)
	if (s2^mcr)&0x10 == 0 {
		out(u, regLCR, 0)
		out(u, regMCR, mcr^0x10)
		s2 = readWith(u, 0xe0, regIIR)
		out(u, regLCR, 0)
		out(u, regMCR, mcr)
		if (s2^mcr)&0x10 != 0 {
			t.Fatal("IIR bit 4 follows MCR.LOOP: would detect an NS16550A")
		}
	}
	// TI16750 probe: 64-byte FIFO bit must not read back.
	out(u, regLCR, 0)
	out(u, regIIR, 0x21)
	s1 := in(u, regIIR) >> 5
	out(u, regIIR, 0x01)
	out(u, regLCR, 0x80)
	out(u, regIIR, 0x21)
	s2 = in(u, regIIR) >> 5
	out(u, regIIR, 0x01)
	out(u, regLCR, 0)
	if s1 == 6 && s2 == 7 {
		t.Fatal("detected as TI16750")
	}
	// Xscale probe: IER bit 6 must not stick.
	out(u, regIER, 0x40)
	if in(u, regIER)&0x40 != 0 {
		t.Fatal("IER UUE bit sticks: would detect an Xscale")
	}
	out(u, regIER, 0)
	// size_fifo: 256 bytes sent in loopback at divisor 1 must leave 16.
	if n := sizeFIFO(u); n != 16 {
		t.Fatalf("size_fifo counted %d, want 16", n)
	}
}

func readWith(u *UART, lcr byte, off uint64) byte {
	out(u, regLCR, lcr)
	return in(u, off)
}

func sizeFIFO(u *UART) int {
	out(u, regLCR, 0)
	out(u, regIIR, 0x07)
	out(u, regMCR, 0x10)
	out(u, regLCR, 0x80)
	out(u, regData, 1)
	out(u, regIER, 0)
	out(u, regLCR, 0x03)
	for i := 0; i < 256; i++ {
		out(u, regData, byte(i))
	}
	n := 0
	for ; in(u, regLSR)&0x01 != 0 && n < 256; n++ {
		in(u, regData)
	}
	out(u, regMCR, 0)
	return n
}

func TestTransmit(t *testing.T) {
	var buf bytes.Buffer
	u := New(nil, nil, &buf)
	for _, c := range []byte("hi\n") {
		out(u, regData, c)
	}
	out(u, regMCR, 0x10)
	out(u, regData, '!') // loopback: not transmitted
	if buf.String() != "hi\n" {
		t.Fatalf("transmitted %q", buf.String())
	}
}

func TestIRQGatedByOUT2(t *testing.T) {
	var l line
	u := New(&l, nil, nil)
	out(u, regIER, 0x02) // THRE pending
	if lv, _ := l.get(); lv {
		t.Fatal("line high without OUT2")
	}
	out(u, regMCR, 0x08)
	if lv, _ := l.get(); !lv {
		t.Fatal("line low with OUT2 and THRE pending")
	}
	out(u, regData, 'x')
	if lv, n := l.get(); !lv || n != 2 {
		t.Fatalf("after THR write: level %v raises %d, want a fresh edge", lv, n)
	}
	in(u, regIIR) // reports and clears THRE
	if lv, _ := l.get(); lv {
		t.Fatal("line high after IIR read cleared THRE")
	}
	out(u, regMCR, 0x18) // loopback forces OUT2 inactive
	out(u, regIER, 0x00)
	out(u, regIER, 0x02)
	if lv, _ := l.get(); lv {
		t.Fatal("line high in loopback")
	}
}

// TestInputNoDrop feeds more than a FIFO's worth of input and checks every
// byte arrives, in order, with the reader paused while the FIFO is full.
func TestInputNoDrop(t *testing.T) {
	var l line
	msg := strings.Repeat("0123456789abcdef", 8)
	u := New(&l, strings.NewReader(msg), nil)
	defer u.Close()
	out(u, regIIR, 0x01)
	out(u, regMCR, 0x08)
	out(u, regIER, 0x01)
	var got []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(msg) && time.Now().Before(deadline) {
		if in(u, regLSR)&lsrDR == 0 {
			time.Sleep(time.Millisecond)
			continue
		}
		got = append(got, in(u, regData))
	}
	if string(got) != msg {
		t.Fatalf("received %q, want %q", got, msg)
	}
	if _, n := l.get(); n == 0 {
		t.Fatal("no receive interrupt")
	}
}

func TestInputWaitsWhileFull(t *testing.T) {
	pr, pw := io.Pipe()
	u := New(nil, pr, nil)
	out(u, regIIR, 0x01)
	go pw.Write(bytes.Repeat([]byte{'a'}, fifoSize+4))
	waitFor(t, func() bool { u.mu.Lock(); defer u.mu.Unlock(); return u.rxLen == fifoSize })
	time.Sleep(10 * time.Millisecond)
	if in(u, regLSR)&lsrOE != 0 {
		t.Fatal("overrun on host input")
	}
	for i := 0; i < fifoSize+4; i++ {
		waitFor(t, func() bool { return in(u, regLSR)&lsrDR != 0 })
		in(u, regData)
	}
	u.Close()
	pw.Close()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseStopsInput(t *testing.T) {
	pr, pw := io.Pipe()
	u := New(nil, pr, nil)
	u.Close()
	go pw.Write([]byte("late"))
	time.Sleep(20 * time.Millisecond)
	if in(u, regLSR)&lsrDR != 0 {
		t.Fatal("input delivered after Close")
	}
	pw.Close()
}

func TestWideAccess(t *testing.T) {
	u := New(nil, nil, nil)
	u.Write(regSCR-1, []byte{0x5a, 0xa5}) // MSR (ignored), SCR
	var b [2]byte
	u.Read(regLSR, b[:])
	if b != [2]byte{0x60, 0xb0} {
		t.Fatalf("LSR/MSR = % x", b)
	}
	if in(u, regSCR) != 0xa5 {
		t.Fatal("wide write missed SCR")
	}
}

// TestSetStateKeepsLiveInput: bytes the host sent while a snapshot was
// being restored follow the snapshot's unread bytes, none lost.
func TestSetStateKeepsLiveInput(t *testing.T) {
	pr, pw := io.Pipe()
	u := New(nil, pr, nil)
	defer u.Close()
	go pw.Write([]byte("echo hi\n"))
	// A fresh UART's FIFO is off: it takes one byte, then the feeder waits.
	waitFor(t, func() bool { u.mu.Lock(); defer u.mu.Unlock(); return u.rxLen == 1 })
	u.SetState(State{FCR: 0x01, IER: 0x01, MCR: 0x08, RX: []byte("ab")})
	var got []byte
	for len(got) < len("abecho hi\n") {
		waitFor(t, func() bool { return in(u, regLSR)&lsrDR != 0 })
		got = append(got, in(u, regData))
	}
	if string(got) != "abecho hi\n" {
		t.Fatalf("received %q after restore, want the saved bytes, then what was typed", got)
	}
	pw.Close()
}
