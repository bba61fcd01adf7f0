package integration

import (
	"bytes"
	"context"
	"log"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// TestHandoffFullToMinimal boots the default guest on the full profile,
// pauses and captures it, and resumes the capture on the minimal profile,
// where the guest keeps running: its shell answers, its clock is right,
// its processes survived, and it powers off.
func TestHandoffFullToMinimal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const mem = 512 << 20
	s := boot(t, ctx, machine.Config{Profile: inventory.Full, Handoff: true, Memory: mem, CPUs: 2})
	// A process that must survive the move.
	run(t, ctx, s, "sleep 100000 & true")
	before := run(t, ctx, s, "cat /proc/uptime")

	s.Machine.Pause()
	st, err := s.Machine.Capture()
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	regions, maps := s.Machine.Memory().Regions()
	saved := make([][]byte, len(maps))
	for i, b := range maps {
		saved[i] = append([]byte(nil), b...)
	}
	s.Close()
	t.Logf("captured %d vCPUs, %d MSRs on vCPU 0, %d memory regions", len(st.VCPUs), len(st.VCPUs[0].MSRs), len(regions))

	var logBuf bytes.Buffer
	cfg := machine.Config{Profile: inventory.Minimal, SerialConsole: true, Log: log.New(&logBuf, "vmm: ", log.Lmicroseconds)}
	restore := func(cfg machine.Config) (*machine.Machine, error) {
		return machine.Restore(cfg, st, func(g *memory.Guest) error {
			_, maps := g.Regions()
			for i := range maps {
				copy(maps[i], saved[i])
			}
			return nil
		})
	}
	r, err := session.StartWith(ctx, cfg, restore, nil)
	if err != nil {
		t.Fatalf("restore on the minimal profile: %v", err)
	}
	defer func() {
		if t.Failed() {
			vcpus := r.Machine.DebugState() // before Close, while the vCPUs exist
			t.Logf("console after resume:\n%s\nVMM log:\n%s\nvCPUs:\n%s", r.Console.Output(), logBuf.String(), vcpus)
		}
		r.Close()
	}()
	after := run(t, ctx, r, "cat /proc/uptime")
	t.Logf("uptime before %q, after %q", before, after)
	if jobs := run(t, ctx, r, "ps"); !bytes.Contains([]byte(jobs), []byte("sleep")) {
		t.Errorf("the sleep process did not survive the move; ps:\n%s", jobs)
	}
	checkResumedGuest(t, ctx, r, 2)
}
