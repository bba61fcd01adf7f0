package net

import (
	"bytes"
	"encoding/json"
	"math"
	stdnet "net"
	"strings"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio"
)

func TestNewMAC(t *testing.T) {
	for _, tc := range []struct {
		name string
		mac  stdnet.HardwareAddr
		ok   bool
	}{
		{"given", stdnet.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, true},
		{"five bytes", stdnet.HardwareAddr{2, 0, 0, 0, 1}, false},
		{"eight bytes", stdnet.HardwareAddr{2, 0, 0, 0, 0, 0, 0, 1}, false},
		{"empty", stdnet.HardwareAddr{}, false},
		{"multicast", stdnet.HardwareAddr{1, 0, 0x5e, 0, 0, 1}, false},
		{"zero", stdnet.HardwareAddr{0, 0, 0, 0, 0, 0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(Options{MAC: tc.mac})
			if (err == nil) != tc.ok {
				t.Fatalf("New: %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && !bytes.Equal(d.MAC(), tc.mac) {
				t.Errorf("MAC %v, want %v", d.MAC(), tc.mac)
			}
		})
	}
	t.Run("generated", func(t *testing.T) {
		a, err := New(Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := New(Options{})
		mac := a.MAC()
		if len(mac) != 6 || mac[0]&1 != 0 || mac[0]&2 == 0 {
			t.Errorf("generated MAC %v is not a locally administered unicast address", mac)
		}
		if bytes.Equal(mac, b.MAC()) {
			t.Errorf("two devices generated the same MAC %v", mac)
		}
	})
}

func TestConfig(t *testing.T) {
	b := newBench(t, false, 0, true)
	mac := []byte{2, 0, 0, 0, 0, 1}
	read := func(off uint64, n int) []byte {
		data := bytes.Repeat([]byte{0xee}, n)
		b.d.ReadConfig(off, data)
		return data
	}
	check := func(when string, status byte) {
		t.Helper()
		for _, tc := range []struct {
			off  uint64
			n    int
			want []byte
		}{
			{0, 12, append(append([]byte{}, mac...), status, 0, 1, 0, 0, 0)},
			{0, 6, mac},
			{4, 4, []byte{0, 1, status, 0}},
			{6, 2, []byte{status, 0}},
			{6, 1, []byte{status}},
			{8, 2, []byte{1, 0}},
			{10, 4, []byte{0, 0, 0, 0}},
			{12, 8, make([]byte, 8)},
			{0x800, 4, make([]byte, 4)},
			{math.MaxUint64 - 1, 4, make([]byte, 4)},
		} {
			if got := read(tc.off, tc.n); !bytes.Equal(got, tc.want) {
				t.Errorf("%s: %d bytes at %#x: % x, want % x", when, tc.n, tc.off, got, tc.want)
			}
		}
	}
	check("disconnected", 0)
	b.d.WriteConfig(0, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0})
	check("after a driver write", 0)
	if b.ft.changes.Load() != 0 {
		t.Errorf("%d configuration changes before Attach", b.ft.changes.Load())
	}

	link, _ := socketPair(t)
	if err := b.d.Attach(link); err != nil {
		t.Fatal(err)
	}
	check("attached", 1)
	if n := b.ft.changes.Load(); n != 1 {
		t.Errorf("%d configuration changes after Attach, want 1", n)
	}
	if err := b.d.Attach(link); err != ErrAttached {
		t.Errorf("a second Attach: %v, want ErrAttached", err)
	}
	if got := b.d.Detach(); got != Link(link) {
		t.Errorf("Detach returned %v, want the attached link", got)
	}
	check("detached", 0)
	if n := b.ft.changes.Load(); n != 2 {
		t.Errorf("%d configuration changes after Detach, want 2", n)
	}
	if got := b.d.Detach(); got != nil {
		t.Errorf("a second Detach returned %v", got)
	}
}

// TestAttachBeforeStart: a link attached to a device that is not live
// comes up without a configuration change (the driver reads the status
// when it sets the device up).
func TestAttachBeforeStart(t *testing.T) {
	b := newBench(t, true, 0, false)
	if b.ft.changes.Load() != 0 {
		t.Error("a configuration change for a device that is not live")
	}
	var st [2]byte
	b.d.ReadConfig(cfgStatus, st[:])
	if st[0] != statusLinkUp {
		t.Errorf("status %#x, want link up", st)
	}
}

func TestFeatures(t *testing.T) {
	d, _ := New(Options{})
	want := map[int]bool{0: true, 1: true, 5: true, 7: true, 8: true, 11: true, 12: true, 15: true, 16: true}
	for bit := range 64 {
		if got := d.Features()&(1<<bit) != 0; got != want[bit] {
			t.Errorf("feature bit %d offered: %v, want %v", bit, got, want[bit])
		}
	}
	if d.Type() != virtio.TypeNet {
		t.Errorf("type %d", d.Type())
	}
	if qs := d.QueueSizes(); len(qs) != 2 || qs[0] != 256 || qs[1] != 256 {
		t.Errorf("queue sizes %v", qs)
	}
}

func TestState(t *testing.T) {
	mac := stdnet.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	d, err := New(Options{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := d.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(saved, &m); err != nil || m["mac"] != "52:54:00:01:02:03" || len(m) != 1 {
		t.Errorf("saved state %s (%v)", saved, err)
	}
	for _, tc := range []struct {
		name    string
		opt     Options
		state   string
		wantErr string
		wantMAC string
	}{
		{"same MAC", Options{MAC: mac}, string(saved), "", "52:54:00:01:02:03"},
		{"generated MAC takes the saved one", Options{}, string(saved), "", "52:54:00:01:02:03"},
		{"other MAC", Options{MAC: stdnet.HardwareAddr{0x52, 0x54, 0, 1, 2, 4}}, string(saved), "has MAC 52:54:00:01:02:03, this one 52:54:00:01:02:04", ""},
		{"not JSON", Options{MAC: mac}, `{"mac":`, "saved state", ""},
		{"no MAC", Options{MAC: mac}, `{}`, "saved MAC", ""},
		{"bad MAC", Options{MAC: mac}, `{"mac":"52:54:00:01:02"}`, "saved MAC", ""},
		{"multicast MAC", Options{}, `{"mac":"01:00:5e:00:00:01"}`, "multicast", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			err = d.RestoreState(json.RawMessage(tc.state))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("RestoreState: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("RestoreState: %v, want an error with %q", err, tc.wantErr)
			}
			if tc.wantMAC != "" && d.MAC().String() != tc.wantMAC {
				t.Errorf("MAC %v after the restore, want %s", d.MAC(), tc.wantMAC)
			}
		})
	}
}
