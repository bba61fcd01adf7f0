// Package vcpu runs one KVM vCPU on its own OS thread and dispatches its
// exits to the port and MMIO buses. It can be paused, kicked and stopped
// from other goroutines without losing an exit: an exit that reached
// userspace is always completed before the vCPU parks.
package vcpu

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// Event is why a vCPU stopped running the guest for good.
type Event int

const (
	// Stopped: Stop was called.
	Stopped Event = iota
	// Shutdown: the guest asked to power off.
	Shutdown
	// Reset: the guest asked to reboot, or triple-faulted.
	Reset
)

func (e Event) String() string {
	switch e {
	case Shutdown:
		return "shutdown"
	case Reset:
		return "reset"
	}
	return "stopped"
}

type want int

const (
	wantRun want = iota
	wantPause
	wantStop
)

// VCPU drives one kvm.VCPU.
type VCPU struct {
	cpu        *kvm.VCPU
	exits      Exits
	recordMSRs bool

	mu     sync.Mutex
	cond   *sync.Cond
	want   want
	paused bool
	tid    int // OS thread running the vCPU, 0 when not inside Run
}

// Exits is where a vCPU's exits go.
type Exits struct {
	PIO, MMIO *bus.Bus
	// MSR accounts the MSR accesses KVM passes to userspace (handleMSR).
	MSR *bus.Bus
	// EOI receives the vectors of level-triggered interrupts the guest
	// ended, with a split irqchip; nil otherwise.
	EOI func(vector uint8)
}

// New returns a runner for cpu that dispatches its exits to exits.
func New(cpu *kvm.VCPU, exits Exits) *VCPU {
	v := &VCPU{cpu: cpu, exits: exits}
	v.cond = sync.NewCond(&v.mu)
	return v
}

// RecordMSRs makes the vCPU forward every MSR access that reaches it to
// KVM, listed or not, so that a boot shows which MSRs a guest uses. The
// unlisted ones are still counted as denied. Call it before Run.
func (v *VCPU) RecordMSRs() { v.recordMSRs = true }

// KVM returns the underlying vCPU, for state access while paused.
func (v *VCPU) KVM() *kvm.VCPU { return v.cpu }

// Run runs the guest on the calling goroutine, locked to its OS thread,
// until the guest shuts down or resets, Stop is called, ctx is done, or an
// error occurs.
func (v *VCPU) Run(ctx context.Context) (Event, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	v.mu.Lock()
	v.tid = unix.Gettid()
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.tid = 0
		v.paused = false
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, v.Stop)
	defer stop()

	for {
		if v.park() {
			return Stopped, nil
		}
		err := v.cpu.Run()
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			// Kicked: any exit that reached us before was completed by this
			// KVM_RUN, so the vCPU's state is consistent here.
			v.cpu.SetImmediateExit(false)
			continue
		}
		if err != nil {
			return Stopped, fmt.Errorf("KVM_RUN on vCPU %d: %w", v.cpu.ID, err)
		}
		if ev, done, err := v.exit(); done || err != nil {
			return ev, err
		}
	}
}

// park blocks while a pause is requested and reports whether to stop. It
// is called only between KVM_RUN calls, when no exit is outstanding.
func (v *VCPU) park() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for v.want == wantPause {
		if !v.paused {
			v.paused = true
			v.cond.Broadcast()
		}
		v.cond.Wait()
	}
	if v.paused {
		v.paused = false
		v.cond.Broadcast()
	}
	return v.want == wantStop
}

func (v *VCPU) exit() (Event, bool, error) {
	switch r := v.cpu.ExitReason(); r {
	case kvm.ExitIO:
		io, err := v.cpu.IO()
		if err != nil {
			return Stopped, true, err
		}
		for off := 0; off < len(io.Data); off += io.Size {
			d := io.Data[off : off+io.Size]
			if io.Out {
				err = v.exits.PIO.Write(uint64(io.Port), d)
			} else {
				err = v.exits.PIO.Read(uint64(io.Port), d)
			}
			if err != nil {
				return Stopped, true, v.withRIP(err)
			}
		}
	case kvm.ExitMMIO:
		m, err := v.cpu.MMIO()
		if err != nil {
			return Stopped, true, err
		}
		if m.Write {
			err = v.exits.MMIO.Write(m.Addr, m.Data)
		} else {
			err = v.exits.MMIO.Read(m.Addr, m.Data)
		}
		if err != nil {
			return Stopped, true, v.withRIP(err)
		}
	case kvm.ExitX86RDMSR, kvm.ExitX86WRMSR:
		if err := v.handleMSR(r == kvm.ExitX86WRMSR); err != nil {
			return Stopped, true, v.withRIP(err)
		}
	case kvm.ExitIOAPICEOI:
		if v.exits.EOI != nil {
			v.exits.EOI(v.cpu.EOIVector())
		}
	case kvm.ExitHLT:
		// Only without an in-kernel LAPIC; treat as power-off like a halted PC.
		return Shutdown, true, nil
	case kvm.ExitShutdown:
		return Reset, true, nil
	case kvm.ExitSystemEvent:
		switch t := v.cpu.SystemEvent(); t {
		case kvm.SystemEventShutdown:
			return Shutdown, true, nil
		case kvm.SystemEventReset:
			return Reset, true, nil
		default:
			return Stopped, true, v.withRIP(fmt.Errorf("guest system event %d", t))
		}
	case kvm.ExitIntr:
	case kvm.ExitFailEntry:
		return Stopped, true, v.withRIP(fmt.Errorf("KVM_EXIT_FAIL_ENTRY, hardware reason %#x", v.cpu.FailEntryReason()))
	case kvm.ExitInternalError:
		sub, data := v.cpu.InternalError()
		return Stopped, true, v.withRIP(fmt.Errorf("KVM_EXIT_INTERNAL_ERROR, suberror %d, data %#x", sub, data))
	default:
		return Stopped, true, v.withRIP(fmt.Errorf("unexpected exit %v", r))
	}
	return Stopped, false, nil
}

func (v *VCPU) withRIP(err error) error {
	regs, rerr := v.cpu.Regs()
	if rerr != nil {
		return fmt.Errorf("vCPU %d: %w", v.cpu.ID, err)
	}
	return fmt.Errorf("vCPU %d at RIP %#x: %w", v.cpu.ID, regs.RIP, err)
}

// kick makes a running KVM_RUN return soon. Callers hold v.mu.
func (v *VCPU) kick() {
	v.cpu.SetImmediateExit(true)
	if v.tid != 0 {
		// SIGURG is handled by the Go runtime (goroutine preemption), so it
		// is harmless to the process and interrupts KVM_RUN with EINTR.
		_ = unix.Tgkill(unix.Getpid(), v.tid, unix.SIGURG)
	}
}

// Pause stops the vCPU at a clean point and returns once it is parked, or
// once Run has returned. Guest state may be read while paused.
func (v *VCPU) Pause() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.want == wantStop {
		return
	}
	v.want = wantPause
	v.kick()
	for !v.paused && v.tid != 0 {
		v.cond.Wait()
	}
}

// Paused reports whether the vCPU is parked by Pause.
func (v *VCPU) Paused() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.paused
}

// Resume lets a paused vCPU run again.
func (v *VCPU) Resume() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.want == wantPause {
		v.want = wantRun
		v.cond.Broadcast()
	}
}

// Stop makes Run return Stopped. It does not wait; join Run's goroutine.
func (v *VCPU) Stop() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.want = wantStop
	v.kick()
	v.cond.Broadcast()
}

// handleMSR answers an MSR access KVM passed to userspace: one its filter
// denied, or one it does not know. An MSR the profile's inventory lists is
// forwarded to KVM's own emulation (host-initiated, so the filter does not
// apply); this happens when the filter sends every access to userspace to
// record which MSRs a guest uses. Any other MSR raises #GP in the guest,
// after the bus has counted it and applied its policy.
func (v *VCPU) handleMSR(write bool) error {
	x := v.cpu.MSR()
	owned, err := v.exits.MSR.Account(uint64(x.Index), write)
	if err != nil {
		return err
	}
	if !owned && !v.recordMSRs {
		v.cpu.CompleteMSR(0, true)
		return nil
	}
	if write {
		err := v.cpu.SetMSRs([]kvm.MSREntry{{Index: x.Index, Data: x.Data}})
		v.cpu.CompleteMSR(0, err != nil)
		return nil
	}
	got, err := v.cpu.MSRs([]uint32{x.Index})
	if err != nil {
		v.cpu.CompleteMSR(0, true)
		return nil
	}
	v.cpu.CompleteMSR(got[0].Data, false)
	return nil
}
