package i8042

import (
	"bytes"
	"sync"
	"testing"
)

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

type rig struct {
	c      *Controller
	line   *line
	resets int
}

func newRig() *rig {
	r := &rig{line: new(line)}
	r.c = New(r.line, func() { r.resets++ })
	return r
}

func (r *rig) cmd(v byte)  { r.c.Command().Write(0, []byte{v}) }
func (r *rig) data(v byte) { r.c.Data().Write(0, []byte{v}) }

func (r *rig) status() byte {
	var b [1]byte
	r.c.Command().Read(0, b[:])
	return b[0]
}

// drain reads the output buffer while the status says it is full.
func (r *rig) drain() []byte {
	var out []byte
	for i := 0; i < 64 && r.status()&stOBF != 0; i++ {
		var b [1]byte
		r.c.Data().Read(0, b[:])
		out = append(out, b[0])
	}
	return out
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name   string
		cmds   []byte // command port writes; a byte after 0x100 goes to the data port
		want   []byte
		ctr    byte // command byte afterwards, read back with 0x20
		resets int
	}{
		{name: "read command byte", want: nil, ctr: ctrBoot},
		{name: "self test", cmds: []byte{cmdSelfTest}, want: []byte{0x55}, ctr: ctrBoot},
		{name: "interface tests", cmds: []byte{cmdKbdTest, cmdAuxTest}, want: []byte{0, 0}, ctr: ctrBoot},
		{name: "write command byte", cmds: []byte{cmdWriteCTR}, want: nil, ctr: 0x30},
		{name: "kbd disable", cmds: []byte{cmdKbdDisable}, ctr: ctrBoot | ctrKbdDis},
		{name: "kbd enable", cmds: []byte{cmdKbdDisable, cmdKbdEnable}, ctr: ctrBoot},
		{name: "aux disable", cmds: []byte{cmdAuxDisable}, ctr: ctrBoot | ctrAuxDis},
		{name: "aux enable", cmds: []byte{cmdAuxDisable, cmdAuxEnable}, ctr: ctrBoot},
		{name: "read output port", cmds: []byte{cmdReadOutput}, want: []byte{outReset | outA20}, ctr: ctrBoot},
		{name: "pulse reset", cmds: []byte{0xfe}, ctr: ctrBoot, resets: 1},
		{name: "pulse without reset bit", cmds: []byte{0xff}, ctr: ctrBoot},
		{name: "output port reset", cmds: []byte{cmdWriteOutput}, ctr: ctrBoot, resets: 1},
		{name: "aux loopback", cmds: []byte{cmdWriteAuxBuf}, want: []byte{0x5a}, ctr: ctrBoot},
	}
	params := map[byte]byte{cmdWriteCTR: 0x30, cmdWriteOutput: outA20, cmdWriteAuxBuf: 0x5a}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig()
			var got []byte
			for _, c := range tc.cmds {
				r.cmd(c)
				if p, ok := params[c]; ok {
					r.data(p)
				}
				got = append(got, r.drain()...)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("replies % x, want % x", got, tc.want)
			}
			r.cmd(cmdReadCTR)
			if ctr := r.drain(); len(ctr) != 1 || ctr[0] != tc.ctr {
				t.Errorf("command byte % x, want %02x", ctr, tc.ctr)
			}
			if r.resets != tc.resets {
				t.Errorf("%d resets, want %d", r.resets, tc.resets)
			}
			if ok, why := r.c.Quiescent(); !ok {
				t.Errorf("not quiescent: %s", why)
			}
		})
	}
}

func TestKeyboard(t *testing.T) {
	tests := []struct {
		name  string
		xlate bool
		in    []byte
		want  []byte
	}{
		{"reset", true, []byte{kbdReset}, []byte{kbdAck, kbdBAT}},
		{"identify translated", true, []byte{kbdGetID}, []byte{kbdAck, 0xab, 0x41}},
		{"identify raw", false, []byte{kbdGetID}, []byte{kbdAck, 0xab, 0x83}},
		{"disable enable", true, []byte{kbdDisable, kbdEnable}, []byte{kbdAck, kbdAck}},
		{"set LEDs", true, []byte{kbdSetLEDs, 0x07}, []byte{kbdAck, kbdAck}},
		{"typematic", true, []byte{kbdTypematic, 0x20}, []byte{kbdAck, kbdAck}},
		{"get scan set", false, []byte{kbdScanSet, 0}, []byte{kbdAck, kbdAck, 2}},
		{"set scan set", false, []byte{kbdScanSet, 3, kbdScanSet, 0}, []byte{kbdAck, kbdAck, kbdAck, kbdAck, 3}},
		{"echo", true, []byte{kbdEcho}, []byte{kbdEcho}},
		{"unknown", true, []byte{0x42}, []byte{kbdNak}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig()
			if !tc.xlate {
				r.cmd(cmdWriteCTR)
				r.data(ctrBoot &^ ctrXlate)
			}
			var got []byte
			for _, b := range tc.in {
				r.data(b)
				got = append(got, r.drain()...)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("replies % x, want % x", got, tc.want)
			}
		})
	}
}

func TestInterrupt(t *testing.T) {
	r := newRig()
	r.data(kbdReset) // two bytes: two edges, one per byte
	if !r.line.level {
		t.Fatal("line low with a byte in the output buffer")
	}
	r.drain()
	if r.line.level || r.line.raises != 2 {
		t.Fatalf("level %v raises %d, want low after 2 edges", r.line.level, r.line.raises)
	}
	// No interrupt with KBDINT off; raised once it is turned on.
	r.cmd(cmdWriteCTR)
	r.data(ctrBoot &^ ctrKbdInt)
	r.data(kbdEcho)
	if r.line.level {
		t.Fatal("line high with keyboard interrupts disabled")
	}
	r.cmd(cmdWriteCTR)
	r.data(ctrBoot)
	if !r.line.level {
		t.Fatal("line low after enabling interrupts with a full buffer")
	}
	r.drain()
	// AUX bytes do not raise the keyboard line.
	r.cmd(cmdWriteAuxBuf)
	r.data(0xa5)
	if r.line.level || r.status()&stAuxOBF == 0 {
		t.Fatalf("aux byte: line %v status %02x", r.line.level, r.status())
	}
}

func TestKeyboardDisabledHoldsBytes(t *testing.T) {
	r := newRig()
	r.c.mu.Lock()
	r.c.kbdReply(kbdAck) // a byte already on its way from the keyboard
	r.c.mu.Unlock()
	r.drain()
	r.cmd(cmdKbdDisable)
	r.c.mu.Lock()
	r.c.kbdReply(kbdAck)
	r.c.mu.Unlock()
	if r.status()&stOBF != 0 {
		t.Fatal("keyboard byte delivered while the interface is disabled")
	}
	if ok, _ := r.c.Quiescent(); ok {
		t.Fatal("quiescent with a queued byte")
	}
	r.cmd(cmdSelfTest) // controller replies still get through
	if got := r.drain(); !bytes.Equal(got, []byte{0x55}) {
		t.Fatalf("got % x", got)
	}
	r.cmd(cmdKbdEnable)
	if got := r.drain(); !bytes.Equal(got, []byte{kbdAck}) {
		t.Fatalf("got % x", got)
	}
}

func TestStatus(t *testing.T) {
	r := newRig()
	if s := r.status(); s != stUnlocked|stSys {
		t.Fatalf("status %02x", s)
	}
	r.cmd(cmdKbdDisable)
	if s := r.status(); s&stCmd == 0 {
		t.Fatalf("status %02x lacks the command flag", s)
	}
	r.cmd(cmdWriteCTR)
	if ok, _ := r.c.Quiescent(); ok {
		t.Fatal("quiescent while a command awaits its data")
	}
	r.data(0)
	if s := r.status(); s&(stCmd|stSys) != 0 {
		t.Fatalf("status %02x after data write clearing SYS", s)
	}
}
