// Package i8042 emulates as much of the PS/2 keyboard controller as Linux
// uses while it boots and to reset the machine: the status register, the
// controller command byte, self and interface tests, port enable and
// disable, the output port, the CPU reset pulse, and a keyboard that
// answers atkbd's probe commands. No key is ever pressed and there is no
// mouse.
//
// The controller is reached through two inventory entries, the data port
// and the command/status port; Data and Command return their devices.
//
// The keyboard interrupt line follows "a keyboard or controller byte is in
// the output buffer and the command byte enables keyboard interrupts", so
// every byte loaded into the output buffer gives a rising edge. AUX
// (mouse) bytes, which only the loopback command 0xD3 produces, would go
// to the AUX interrupt, which this machine does not wire: Linux's AUX probe
// then waits 250 ms for an interrupt that never comes and gives up on the
// port. Boot with i8042.noaux to skip that probe.
package i8042

import (
	"fmt"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/irq"
)

// Status register bits.
const (
	stOBF      = 0x01 // output buffer full
	stSys      = 0x04 // system flag, a copy of the command byte's
	stCmd      = 0x08 // the last write went to the command port
	stUnlocked = 0x10 // keyboard not inhibited by the key lock
	stAuxOBF   = 0x20 // the output buffer holds an AUX byte
)

// Command byte bits.
const (
	ctrKbdInt = 0x01
	ctrAuxInt = 0x02
	ctrSys    = 0x04
	ctrKbdDis = 0x10
	ctrAuxDis = 0x20
	ctrXlate  = 0x40

	// ctrBoot is the command byte a BIOS leaves behind: keyboard
	// interrupt on, POST passed, scan code translation on.
	ctrBoot = ctrKbdInt | ctrSys | ctrXlate
)

// Controller commands, written to the command port.
const (
	cmdReadCTR     = 0x20
	cmdWriteCTR    = 0x60
	cmdAuxDisable  = 0xa7
	cmdAuxEnable   = 0xa8
	cmdAuxTest     = 0xa9
	cmdSelfTest    = 0xaa
	cmdKbdTest     = 0xab
	cmdKbdDisable  = 0xad
	cmdKbdEnable   = 0xae
	cmdReadOutput  = 0xd0
	cmdWriteOutput = 0xd1
	cmdWriteKbdBuf = 0xd2
	cmdWriteAuxBuf = 0xd3 // AUX loopback
	cmdWriteAux    = 0xd4
	cmdA20Off      = 0xdd
	cmdA20On       = 0xdf
	cmdPulseBase   = 0xf0 // 0xf0-0xff pulse output port bits 0-3 low where the command's bit is 0
)

// Output port bits.
const (
	outReset = 0x01 // CPU reset, active low
	outA20   = 0x02
)

// Keyboard commands, written to the data port, and its replies.
const (
	kbdSetLEDs   = 0xed
	kbdEcho      = 0xee
	kbdScanSet   = 0xf0
	kbdGetID     = 0xf2
	kbdTypematic = 0xf3
	kbdEnable    = 0xf4
	kbdDisable   = 0xf5
	kbdDefaults  = 0xf6
	kbdResend    = 0xfe
	kbdReset     = 0xff

	kbdAck = 0xfa
	kbdBAT = 0xaa // basic assurance test passed
	kbdNak = 0xfe
)

// queueMax bounds each queue; a guest flooding commands loses replies
// beyond it, as a keyboard's own buffer would.
const queueMax = 16

type outByte struct {
	b   byte
	aux bool
}

// Controller is an i8042 with a keyboard attached. It is safe for
// concurrent use.
type Controller struct {
	mu    sync.Mutex
	line  irq.Line
	reset func()

	ctr     byte
	outPort byte
	lastCmd bool // the last write went to the command port
	pending byte // controller command waiting for its data byte, or 0

	obf    bool // output buffer full
	obfAux bool
	out    byte
	ctrlQ  []outByte // controller replies, loaded first
	kbdQ   []byte    // keyboard replies, loaded while the keyboard is enabled

	kbdPending byte // keyboard command waiting for its parameter, or 0
	scanSet    byte
	level      bool
}

// New returns a controller in its post-BIOS state that drives the
// keyboard interrupt line kbd and calls reset, which may be nil, when the
// guest pulses the CPU reset line. reset is called without the controller's
// lock held, from the vCPU thread that wrote the command.
func New(kbd irq.Line, reset func()) *Controller {
	return &Controller{line: kbd, reset: reset, ctr: ctrBoot, outPort: outReset | outA20, scanSet: 2}
}

// Data returns the device for the data port entry.
func (c *Controller) Data() bus.Device { return dataPort{c} }

// Command returns the device for the command/status port entry.
func (c *Controller) Command() bus.Device { return commandPort{c} }

// Quiescent reports whether the controller holds no guest-visible state in
// flight: no byte in or queued for the output buffer and no command
// waiting for a parameter. If not, the string says what is in flight.
func (c *Controller) Quiescent() (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.obf:
		return false, fmt.Sprintf("output buffer holds %#02x", c.out)
	case len(c.ctrlQ) > 0 || len(c.kbdQ) > 0:
		return false, fmt.Sprintf("%d bytes queued for the output buffer", len(c.ctrlQ)+len(c.kbdQ))
	case c.pending != 0:
		return false, fmt.Sprintf("controller command %#02x awaits its data byte", c.pending)
	case c.kbdPending != 0:
		return false, fmt.Sprintf("keyboard command %#02x awaits its parameter", c.kbdPending)
	}
	return true, ""
}

type dataPort struct{ c *Controller }

func (p dataPort) Read(offset uint64, data []byte) {
	p.c.mu.Lock()
	v := p.c.readData()
	p.c.mu.Unlock()
	fill(data, v)
}

func (p dataPort) Write(offset uint64, data []byte) {
	p.c.mu.Lock()
	reset := p.c.writeData(data[0])
	p.c.mu.Unlock()
	if reset && p.c.reset != nil {
		p.c.reset()
	}
}

type commandPort struct{ c *Controller }

func (p commandPort) Read(offset uint64, data []byte) {
	p.c.mu.Lock()
	v := p.c.status()
	p.c.mu.Unlock()
	fill(data, v)
}

func (p commandPort) Write(offset uint64, data []byte) {
	p.c.mu.Lock()
	reset := p.c.command(data[0])
	p.c.mu.Unlock()
	if reset && p.c.reset != nil {
		p.c.reset()
	}
}

// fill answers a read of a one-byte register; the bytes of a wider access
// beyond it read as an absent port.
func fill(data []byte, v byte) {
	data[0] = v
	for i := 1; i < len(data); i++ {
		data[i] = 0xff
	}
}

func (c *Controller) status() byte {
	s := byte(stUnlocked) | c.ctr&ctrSys
	if c.obf {
		s |= stOBF
		if c.obfAux {
			s |= stAuxOBF
		}
	}
	if c.lastCmd {
		s |= stCmd
	}
	return s
}

// readData returns the output buffer and loads the next byte; an empty
// buffer reads as its last contents.
func (c *Controller) readData() byte {
	v := c.out
	if c.obf {
		c.obf, c.obfAux = false, false
		c.update()
		c.load()
	}
	return v
}

// command runs a controller command and reports whether it reset the CPU.
func (c *Controller) command(cmd byte) (reset bool) {
	c.lastCmd = true
	c.pending = 0
	switch cmd {
	case cmdReadCTR:
		c.reply(c.ctr, false)
	case cmdWriteCTR, cmdWriteOutput, cmdWriteKbdBuf, cmdWriteAuxBuf, cmdWriteAux:
		c.pending = cmd
	case cmdAuxDisable:
		c.ctr |= ctrAuxDis
	case cmdAuxEnable:
		c.ctr &^= ctrAuxDis
	case cmdAuxTest, cmdKbdTest:
		c.reply(0x00, false)
	case cmdSelfTest:
		c.ctr |= ctrSys
		c.reply(0x55, false)
	case cmdKbdDisable:
		c.ctr |= ctrKbdDis
	case cmdKbdEnable:
		c.ctr &^= ctrKbdDis
		c.load()
	case cmdReadOutput:
		c.reply(c.outPort, false)
	case cmdA20Off:
		c.outPort &^= outA20
	case cmdA20On:
		c.outPort |= outA20
	default:
		if cmd >= cmdPulseBase && cmd&outReset == 0 {
			return true
		}
		// Other commands (controller RAM, input port, vendor
		// extensions) do nothing here.
	}
	return false
}

// writeData handles a data port write: a command's data byte or a byte
// for the keyboard. It reports whether the write reset the CPU.
func (c *Controller) writeData(v byte) (reset bool) {
	c.lastCmd = false
	cmd := c.pending
	c.pending = 0
	switch cmd {
	case cmdWriteCTR:
		c.ctr = v
		c.update()
		c.load()
	case cmdWriteOutput:
		c.outPort = v
		return v&outReset == 0
	case cmdWriteKbdBuf:
		c.kbdReply(v)
	case cmdWriteAuxBuf:
		c.reply(v, true)
	case cmdWriteAux:
		// No mouse is attached: the byte goes nowhere.
	default:
		// Writing to the keyboard enables its interface.
		c.ctr &^= ctrKbdDis
		c.keyboard(v)
	}
	return false
}

// keyboard runs a keyboard command or takes its parameter.
func (c *Controller) keyboard(v byte) {
	if cmd := c.kbdPending; cmd != 0 {
		c.kbdPending = 0
		c.kbdReply(kbdAck)
		if cmd == kbdScanSet {
			if v == 0 {
				c.kbdReply(c.scanSet)
			} else if v <= 3 {
				c.scanSet = v
			}
		}
		return
	}
	switch v {
	case kbdSetLEDs, kbdTypematic, kbdScanSet:
		c.kbdPending = v
		c.kbdReply(kbdAck)
	case kbdEcho:
		c.kbdReply(kbdEcho)
	case kbdGetID:
		c.kbdReply(kbdAck)
		c.kbdReply(0xab)
		c.kbdReply(0x83) // MF2 keyboard
	case kbdEnable, kbdDisable, kbdDefaults:
		c.kbdReply(kbdAck)
	case kbdReset:
		c.kbdQ = c.kbdQ[:0]
		c.scanSet = 2
		c.kbdReply(kbdAck)
		c.kbdReply(kbdBAT)
	default:
		if v >= 0xf7 && v <= 0xfd { // scan set 3 key modes
			c.kbdReply(kbdAck)
			return
		}
		c.kbdReply(kbdNak) // unknown command, or resend with nothing to resend
	}
}

// reply queues a controller byte for the output buffer.
func (c *Controller) reply(b byte, aux bool) {
	if len(c.ctrlQ) < queueMax {
		c.ctrlQ = append(c.ctrlQ, outByte{b, aux})
	}
	c.load()
}

// kbdReply queues a keyboard byte, translated to scan code set 1 terms if
// the command byte asks for translation. The keyboard sends no scan codes,
// only replies; of those just the identity byte and scan set numbers
// change under translation.
func (c *Controller) kbdReply(b byte) {
	if c.ctr&ctrXlate != 0 {
		switch b {
		case 0x83:
			b = 0x41
		case 1:
			b = 0x43
		case 2:
			b = 0x41
		case 3:
			b = 0x3f
		}
	}
	if len(c.kbdQ) < queueMax {
		c.kbdQ = append(c.kbdQ, b)
	}
	c.load()
}

// load moves the next queued byte into an empty output buffer.
func (c *Controller) load() {
	if c.obf {
		return
	}
	switch {
	case len(c.ctrlQ) > 0:
		c.out, c.obfAux = c.ctrlQ[0].b, c.ctrlQ[0].aux
		c.ctrlQ = c.ctrlQ[1:]
	case len(c.kbdQ) > 0 && c.ctr&ctrKbdDis == 0:
		c.out, c.obfAux = c.kbdQ[0], false
		c.kbdQ = c.kbdQ[1:]
	default:
		return
	}
	c.obf = true
	c.update()
}

func (c *Controller) update() {
	level := c.obf && !c.obfAux && c.ctr&ctrKbdInt != 0
	if level == c.level {
		return
	}
	c.level = level
	if c.line != nil {
		c.line.SetLevel(level)
	}
}
