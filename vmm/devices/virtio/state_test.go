package virtio

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// TestStateRoundTrip: a request the driver made available while the
// machine was captured is served after the restore, with the interrupt
// the restored MSI-X table names.
func TestStateRoundTrip(t *testing.T) {
	dr := newDriver(t)
	dr.setup(descAt)
	dr.r.desc(0, 0x4000, 64, descWrite, 0)
	dr.r.offer(8, 0)
	dr.d.Pause()
	st, err := dr.d.State()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}

	s := &msiSink{}
	d, err := NewPCIDevice(Entropy{}, dr.r, s, func(err error) { t.Logf("device: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	var got State
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if err := d.SetState(&got); err != nil {
		t.Fatal(err)
	}
	d.Resume()
	d.Kick()
	if idx := binary.LittleEndian.Uint16(dr.r[usedAt+2:]); idx != 1 {
		t.Fatalf("used index %d after the restore", idx)
	}
	if len(s.data) != 1 || s.data[0] != 0x61 {
		t.Errorf("interrupts %v after the restore", s.data)
	}
}

func TestSetStateRefuses(t *testing.T) {
	dr := newDriver(t)
	dr.setup(descAt)
	for _, tc := range []struct {
		name string
		edit func(*State)
	}{
		{"other device type", func(s *State) { s.Type = TypeBlock }},
		{"features not offered", func(s *State) { s.Features |= 1 << 5 }},
		{"queue outside memory", func(s *State) { s.Queues[0].Desc = 0xfff0 }},
		{"queue larger than the device's", func(s *State) { s.Queues[0].Size = 512 }},
		{"vector past the table", func(s *State) { s.Queues[0].Vector = 7 }},
		{"other configuration space", func(s *State) { s.Config[0x02]++ }},
		{"extra queue", func(s *State) { s.Queues = append(s.Queues, s.Queues[0]) }},
		{"backend state for a stateless backend", func(s *State) { s.Backend = json.RawMessage(`{}`) }},
		{"DRIVER_OK without FEATURES_OK", func(s *State) { s.Status = StatusDriverOK }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := dr.d.State()
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(st)
			d, err := NewPCIDevice(Entropy{}, dr.r, &msiSink{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.SetState(st); err == nil {
				t.Error("restored")
			}
		})
	}
}

// pusher is a Worker backend whose goroutine answers one request from
// outside Notify, as a tap's receive side does.
type pusher struct {
	Entropy
	t    Transport
	done chan error
}

func (p *pusher) Start(_ uint64, t Transport) {
	p.done = make(chan error, 1)
	go func() {
		p.done <- t.Do(func(qs []*Queue) error {
			c, err := qs[0].Pop()
			if err != nil || c == nil {
				return err
			}
			qs[0].Push(c, 0)
			return nil
		})
	}()
}

func (p *pusher) Stop() {}

func TestWorkerPaused(t *testing.T) {
	r := make(ram, 0x10000)
	r.desc(0, 0x4000, 64, descWrite, 0)
	r.offer(8, 0)
	p := &pusher{}
	s := &msiSink{}
	d, err := NewPCIDevice(p, r, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Pause() // captured before the driver finishes: the worker must wait
	dr := &driver{t: t, d: d, r: r, msi: s, caps: map[uint8]uint32{capCommon: commonOff}}
	dr.setup(descAt)
	select {
	case err := <-p.done:
		t.Fatalf("the worker ran while paused: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if binary.LittleEndian.Uint16(r[usedAt+2:]) != 0 {
		t.Fatal("guest memory changed while paused")
	}
	d.Resume()
	if err := <-p.done; err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint16(r[usedAt+2:]) != 1 || len(s.data) != 1 {
		t.Errorf("after resume: used index %d, %d interrupts", binary.LittleEndian.Uint16(r[usedAt+2:]), len(s.data))
	}
	// After a reset the worker's calls are refused.
	dr.w(commonOff+ccDeviceStatus, 1, 0)
	if err := d.Do(func([]*Queue) error { return nil }); !errors.Is(err, ErrStopped) {
		t.Errorf("Do after reset: %v", err)
	}
}
