// Package serial emulates a 16550A UART, the guest's console.
//
// The UART serves the eight byte registers of its inventory entry (offsets
// 0-7); it knows nothing of port numbers or interrupt numbers. Output goes
// to an io.Writer as the guest writes the transmit holding register; input
// comes from an io.Reader drained by a goroutine the UART owns, into a
// 16-byte receive FIFO. When the FIFO is full the goroutine stops reading
// until the guest makes room, so no input byte is ever dropped.
//
// Register behaviour follows what Linux's 8250 driver checks when it
// probes the port (drivers/tty/serial/8250/8250_port.c, autoconfig and
// serial8250_do_startup): IER keeps only its low four bits; loopback routes
// MCR outputs to MSR inputs; with the FIFO enabled IIR reads with bits 7:6
// set and bits 5:4 clear, whatever LCR holds, so the EFR and 16750 probes
// fail and the port is reported as a 16550A; the loopback FIFO holds
// exactly 16 bytes; and enabling the THRE interrupt while the transmitter
// is empty re-asserts it.
//
// The interrupt output is gated by OUT2 in MCR, as on PC hardware, where
// OUT2 enables the buffer between the UART and the interrupt controller;
// Linux sets OUT2 when it opens a port with an interrupt and clears it on
// shutdown. In loopback mode the OUT2 pin is forced inactive, so the line
// stays low. (QEMU's serial.c does not model the gate; the guest-visible
// difference is only that no interrupt reaches the controller while OUT2
// is clear, which Linux never relies on.)
//
// Transmission is instantaneous: THRE and TEMT are always set. Receive data
// below the FIFO trigger level is reported at once as a character timeout
// (IIR 0x0C) instead of after four character times.
package serial

import (
	"io"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
)

// Register offsets within the UART's entry.
const (
	regData = 0 // RBR on read, THR on write; DLL when LCR.DLAB is set
	regIER  = 1 // DLM when LCR.DLAB is set
	regIIR  = 2 // FCR on write
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7
)

const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmit holding register empty
	ierRLSI = 0x04 // receiver line status
	ierMSI  = 0x08 // modem status
	ierMask = 0x0f

	iirNone = 0x01
	iirMSI  = 0x00
	iirTHRI = 0x02
	iirRDI  = 0x04
	iirRLSI = 0x06
	iirCTI  = 0x0c // character timeout
	iirFIFO = 0xc0 // FIFOs enabled

	fcrEnable  = 0x01
	fcrClearRx = 0x02
	fcrKeep    = 0xc9 // enable, DMA mode and trigger level stick

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1f

	lsrDR    = 0x01
	lsrOE    = 0x02
	lsrTHRE  = 0x20
	lsrTEMT  = 0x40
	lsrError = 0x1e // OE, PE, FE, BI: the bits that raise a line status interrupt

	msrTERI = 0x04
	msrCTS  = 0x10
	msrDSR  = 0x20
	msrRI   = 0x40
	msrDCD  = 0x80

	// fifoSize is the 16550A's receive FIFO depth.
	fifoSize = 16
)

// UART is a 16550A. Create it with New; it is safe for concurrent use.
type UART struct {
	mu    sync.Mutex
	space sync.Cond // the receive FIFO gained room, loopback ended, or Close
	line  irq.Line
	out   io.Writer

	dll, dlm byte
	ier      byte
	fcr      byte
	lcr      byte
	mcr      byte
	scr      byte
	lsrErr   byte // sticky error bits, cleared by reading LSR
	msr      byte // modem status inputs (bits 7:4)
	msrDelta byte // change bits (3:0), cleared by reading MSR

	rx     [fifoSize]byte
	rxHead int
	rxLen  int
	lastRx byte

	thrPending bool // THRE interrupt pending; cleared by IIR read or THR write
	level      bool // current level of line
	closed     bool
}

var _ bus.Device = (*UART)(nil)

// New returns a UART in its reset state that signals interrupts on line,
// writes transmitted bytes to out and, if in is not nil, starts a goroutine
// that feeds bytes read from in to the receive FIFO. line and out may be
// nil. Call Close to stop the goroutine.
func New(line irq.Line, in io.Reader, out io.Writer) *UART {
	u := &UART{line: line, out: out, msr: msrDCD | msrDSR | msrCTS}
	u.space.L = &u.mu
	if in != nil {
		go u.feed(in)
	}
	return u
}

// Close stops the input goroutine: no byte read from in after Close is
// delivered to the guest. Close does not close in; a goroutine blocked in
// in.Read exits when that Read returns. Close always returns nil.
func (u *UART) Close() error {
	u.mu.Lock()
	u.closed = true
	u.space.Broadcast()
	u.mu.Unlock()
	return nil
}

// feed copies in to the receive FIFO until in fails or the UART is closed.
func (u *UART) feed(in io.Reader) {
	var buf [64]byte
	for {
		n, err := in.Read(buf[:])
		for _, b := range buf[:n] {
			if !u.receive(b) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// receive waits until the FIFO has room outside loopback mode, then queues
// b. It reports false if the UART was closed.
func (u *UART) receive(b byte) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for !u.closed && (u.rxLen >= u.rxCap() || u.mcr&mcrLoop != 0) {
		u.space.Wait()
	}
	if u.closed {
		return false
	}
	u.push(b)
	u.update()
	return true
}

// Read serves a guest read; wider accesses read consecutive registers, as
// an ISA bus splits them.
func (u *UART) Read(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		data[i] = u.readReg(offset + uint64(i))
	}
}

// Write serves a guest write; wider accesses write consecutive registers.
func (u *UART) Write(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, v := range data {
		u.writeReg(offset+uint64(i), v)
	}
}

func (u *UART) readReg(off uint64) byte {
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			return u.dll
		}
		if u.rxLen > 0 {
			u.lastRx = u.rx[u.rxHead]
			u.rxHead = (u.rxHead + 1) % fifoSize
			u.rxLen--
			u.space.Broadcast()
			u.update()
		}
		return u.lastRx
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			return u.dlm
		}
		return u.ier
	case regIIR:
		id := u.iir()
		if id == iirTHRI {
			u.thrPending = false
			u.update()
		}
		if u.fcr&fcrEnable != 0 {
			id |= iirFIFO
		}
		return id
	case regLCR:
		return u.lcr
	case regMCR:
		return u.mcr
	case regLSR:
		v := lsrTHRE | lsrTEMT | u.lsrErr
		if u.rxLen > 0 {
			v |= lsrDR
		}
		if u.lsrErr != 0 {
			u.lsrErr = 0
			u.update()
		}
		return v
	case regMSR:
		v := u.msr | u.msrDelta
		if u.msrDelta != 0 {
			u.msrDelta = 0
			u.update()
		}
		return v
	case regSCR:
		return u.scr
	}
	return 0xff
}

func (u *UART) writeReg(off uint64, v byte) {
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return
		}
		u.transmit(v)
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return
		}
		v &= ierMask
		if (u.ier^v)&ierTHRI != 0 {
			// The transmitter is always empty: enabling the THRE
			// interrupt asserts it, disabling it withdraws it.
			u.thrPending = v&ierTHRI != 0
		}
		u.ier = v
		u.update()
	case regIIR:
		u.writeFCR(v)
	case regLCR:
		u.lcr = v
	case regMCR:
		u.writeMCR(v & mcrMask)
	case regSCR:
		u.scr = v
	}
	// LSR and MSR writes are factory-test functions; ignore them.
}

// transmit sends v, or in loopback mode receives it. The THRE interrupt
// drops while the byte is in flight and rises again once it has gone,
// giving an edge per byte.
func (u *UART) transmit(v byte) {
	u.thrPending = false
	u.update()
	if u.mcr&mcrLoop != 0 {
		if u.rxLen < u.rxCap() {
			u.push(v)
		} else {
			u.lsrErr |= lsrOE
		}
	} else if u.out != nil {
		// A failing console writer loses output; the guest cannot
		// be told, as a real line would not tell it either.
		_, _ = u.out.Write([]byte{v})
	}
	u.thrPending = true
	u.update()
}

func (u *UART) writeFCR(v byte) {
	if (u.fcr^v)&fcrEnable != 0 {
		v |= fcrClearRx // changing the FIFO mode empties the FIFOs
	}
	if v&fcrClearRx != 0 {
		u.rxHead, u.rxLen = 0, 0
		u.space.Broadcast()
	}
	u.fcr = v & fcrKeep
	u.update()
}

func (u *UART) writeMCR(v byte) {
	old := u.mcr
	u.mcr = v
	var lines byte = msrDCD | msrDSR | msrCTS
	if v&mcrLoop != 0 {
		lines = 0
		if v&mcrRTS != 0 {
			lines |= msrCTS
		}
		if v&mcrDTR != 0 {
			lines |= msrDSR
		}
		if v&mcrOUT1 != 0 {
			lines |= msrRI
		}
		if v&mcrOUT2 != 0 {
			lines |= msrDCD
		}
	}
	changed := (u.msr ^ lines) >> 4
	if lines&msrRI != 0 {
		changed &^= msrTERI // TERI flags only the trailing edge of RI
	}
	u.msrDelta |= changed
	u.msr = lines
	if old&mcrLoop != 0 && v&mcrLoop == 0 {
		u.space.Broadcast() // host input may flow again
	}
	u.update()
}

func (u *UART) rxCap() int {
	if u.fcr&fcrEnable != 0 {
		return fifoSize
	}
	return 1
}

func (u *UART) push(b byte) {
	u.rx[(u.rxHead+u.rxLen)%fifoSize] = b
	u.rxLen++
}

func (u *UART) trigger() int {
	return [4]int{1, 4, 8, 14}[u.fcr>>6]
}

// iir returns the highest-priority pending interrupt, without FIFO bits.
func (u *UART) iir() byte {
	switch {
	case u.ier&ierRLSI != 0 && u.lsrErr&lsrError != 0:
		return iirRLSI
	case u.ier&ierRDI != 0 && u.rxLen > 0:
		if u.fcr&fcrEnable == 0 || u.rxLen >= u.trigger() {
			return iirRDI
		}
		return iirCTI
	case u.ier&ierTHRI != 0 && u.thrPending:
		return iirTHRI
	case u.ier&ierMSI != 0 && u.msrDelta != 0:
		return iirMSI
	}
	return iirNone
}

// update drives the interrupt line: high while an interrupt is pending and
// OUT2 gates it through.
func (u *UART) update() {
	level := u.iir() != iirNone && u.mcr&(mcrOUT2|mcrLoop) == mcrOUT2
	if level == u.level {
		return
	}
	u.level = level
	if u.line != nil {
		u.line.SetLevel(level)
	}
}

// State is the UART's register state and unread input, for snapshots.
type State struct {
	DLL, DLM   byte
	IER, FCR   byte
	LCR, MCR   byte
	SCR        byte
	LSRErr     byte
	MSR        byte
	RX         []byte // unread received bytes, oldest first
	THRPending bool
}

// State returns the register state.
func (u *UART) State() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := State{DLL: u.dll, DLM: u.dlm, IER: u.ier, FCR: u.fcr, LCR: u.lcr, MCR: u.mcr, SCR: u.scr,
		LSRErr: u.lsrErr, MSR: u.msr, THRPending: u.thrPending}
	for i := 0; i < u.rxLen; i++ {
		s.RX = append(s.RX, u.rx[(u.rxHead+i)%fifoSize])
	}
	return s
}

// SetState loads register state and updates the interrupt line. The
// saved unread bytes come first in the receive FIFO, then any the host
// side sent since the UART was made (typed while the machine was being
// restored); bytes beyond the FIFO's size are dropped.
func (u *UART) SetState(s State) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var live []byte
	for i := 0; i < u.rxLen; i++ {
		live = append(live, u.rx[(u.rxHead+i)%fifoSize])
	}
	u.dll, u.dlm, u.ier, u.fcr, u.lcr, u.mcr, u.scr = s.DLL, s.DLM, s.IER, s.FCR, s.LCR, s.MCR, s.SCR
	u.lsrErr, u.msr, u.thrPending = s.LSRErr, s.MSR, s.THRPending
	rx := append(append([]byte(nil), s.RX...), live...)
	u.rxHead, u.rxLen = 0, min(len(rx), fifoSize)
	copy(u.rx[:], rx[:u.rxLen])
	u.update()
	u.space.Broadcast()
}
