package integration

import (
	"bytes"
	"context"
	"log"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// shellPrompt is the default guest's shell prompt at the start of a line.
var shellPrompt = regexp.MustCompile(`(?m)^\$ `)

const guestCmdline = "console=ttyS0 reboot=k panic=-1 i8042.noaux quiet"

// bootDefault boots the default guest on the full profile and waits for
// its shell.
func bootDefault(t *testing.T, ctx context.Context, cpus int, mem uint64) *session.Session {
	t.Helper()
	return boot(t, ctx, machine.Config{Profile: inventory.Full, Memory: mem, CPUs: cpus})
}

// boot boots the default guest on the machine cfg describes and waits for
// its shell.
func boot(t *testing.T, ctx context.Context, cfg machine.Config) *session.Session {
	t.Helper()
	kvmtest.Require(t)
	kernel, initrd := defaultGuest(t)
	var logBuf bytes.Buffer
	cfg.Kernel, cfg.Initrd, cfg.Cmdline = bytes.NewReader(kernel), bytes.NewReader(initrd), guestCmdline
	cfg.Log = log.New(&logBuf, "vmm: ", log.Lmicroseconds)
	s, err := session.Start(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("start the guest: %v", err)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("guest console:\n%s\nVMM log:\n%s", s.Console.Output(), logBuf.String())
		}
	})
	// The default guest's init runs "bunkerguest info" before the shell.
	if _, err := s.Console.Expect(ctx, regexp.MustCompile(`cpus=\d+`)); err != nil {
		t.Fatalf("guest did not reach userspace: %v", err)
	}
	// Type only once the shell shows its prompt: a line typed while init
	// hands the console from bunkerguest to the shell can be lost.
	if _, err := s.Console.Expect(ctx, shellPrompt); err != nil {
		t.Fatalf("no shell prompt: %v", err)
	}
	if _, status, err := s.Console.Run(ctx, "true"); err != nil || status != 0 {
		t.Fatalf("guest shell does not answer: status %d, %v", status, err)
	}
	return s
}

func run(t *testing.T, ctx context.Context, s *session.Session, cmd string) string {
	t.Helper()
	out, status, err := s.Console.Run(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if status != 0 {
		t.Fatalf("%s: exit status %d, output %q", cmd, status, out)
	}
	return strings.TrimSpace(out)
}

// info parses bunkerguest's key=value lines.
func info(t *testing.T, ctx context.Context, s *session.Session) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(run(t, ctx, s, "bunkerguest info"), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}

func TestBootDefaultGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const mem = 512 << 20
	s := bootDefault(t, ctx, 2, mem)
	checkGuest(t, ctx, s, mem)
}

// TestBootMinimalProfile boots the stock kernel straight onto the minimal
// profile (with COM1 added as its console): no PIC, PIT, CMOS or i8042,
// interrupts through the userspace IOAPIC, wall clock from kvmclock.
func TestBootMinimalProfile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const mem = 512 << 20
	s := boot(t, ctx, machine.Config{Profile: inventory.Minimal, Memory: mem, CPUs: 2, SerialConsole: true})
	checkGuest(t, ctx, s, mem)

	// The guest probed the legacy devices it did not get; the VMM counted
	// the denied accesses and served none of them.
	denied := map[uint64]bool{}
	checkNoLegacy(t, s.Machine)
	for _, b := range s.Machine.Buses() {
		if b.Space() == inventory.SpacePIO {
			for _, st := range b.Denied() {
				denied[st.Addr] = true
			}
		}
	}
	pic := inventory.MustGet(inventory.PICMaster)
	if !denied[pic.Base] && !denied[pic.Base+1] {
		t.Errorf("the guest's PIC probe at %v was not counted as denied", pic)
	}
}

// checkGuest checks what the guest sees and powers it off.
func checkGuest(t *testing.T, ctx context.Context, s *session.Session, mem uint64) {
	t.Helper()

	if got := run(t, ctx, s, "cat /sys/devices/system/cpu/online"); got != "0-1" {
		t.Errorf("online CPUs = %q, want 0-1", got)
	}
	in := info(t, ctx, s)
	if in["cpus"] != "2" {
		t.Errorf("bunkerguest info: cpus=%q, want 2", in["cpus"])
	}
	// MemTotal is RAM less what the kernel reserves for itself; its own
	// image and tables take well under 64 MiB of a 512 MiB guest.
	kib, err := strconv.ParseUint(in["mem_total_kib"], 10, 64)
	if err != nil {
		t.Fatalf("bunkerguest info: mem_total_kib=%q: %v", in["mem_total_kib"], err)
	}
	if kib > mem>>10 || kib < (mem-64<<20)>>10 {
		t.Errorf("MemTotal = %d KiB, want between %d and %d", kib, (mem-64<<20)>>10, mem>>10)
	}
	checkClock(t, in, "after boot")
	powerOff(t, ctx, s)
}

func TestRebootEndsVMM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := bootDefault(t, ctx, 1, 256<<20)
	if err := s.Console.Send("bunkerguest reboot\n"); err != nil {
		t.Fatal(err)
	}
	exit, err := s.Wait(ctx)
	if err != nil {
		t.Fatalf("after reboot: %v", err)
	}
	if exit != machine.ExitReboot {
		t.Fatalf("guest reboot ended the VMM with %v, want reboot", exit)
	}
}

// checkResumedGuest checks a guest after a resume: its CPUs, its wall
// clock, and that the minimal machine serves no legacy entry; then it
// powers the guest off.
func checkResumedGuest(t *testing.T, ctx context.Context, r *session.Session, cpus int) {
	t.Helper()
	in := info(t, ctx, r)
	if in["cpus"] != strconv.Itoa(cpus) {
		t.Errorf("after resume: cpus=%q, want %d", in["cpus"], cpus)
	}
	checkClock(t, in, "after resume")
	checkNoLegacy(t, r.Machine)
	checkNoDenied(t, r.Machine)
	powerOff(t, ctx, r)
}

// checkClock checks bunkerguest info's unix_time against the host's clock.
func checkClock(t *testing.T, in map[string]string, when string) {
	t.Helper()
	secs, err := strconv.ParseInt(in["unix_time"], 10, 64)
	if err != nil {
		t.Fatalf("bunkerguest info: unix_time=%q: %v", in["unix_time"], err)
	}
	if d := time.Since(time.Unix(secs, 0)); d < -5*time.Second || d > 5*time.Second {
		t.Errorf("%s the guest clock is %v off the host's", when, d)
	}
}

// checkNoLegacy checks that a machine serves no legacy inventory entry.
func checkNoLegacy(t *testing.T, m *machine.Machine) {
	t.Helper()
	for _, b := range m.Buses() {
		for _, st := range b.Stats() {
			if st.Entry.Class == inventory.Legacy {
				t.Errorf("minimal machine serves legacy entry %v", st.Entry)
			}
		}
	}
}

// checkNoDenied checks that a resumed guest reached for nothing outside
// its profile: one that still used a boot-time device would show here. (A
// guest booting on the minimal profile probes, and is denied; one resumed
// after booting on the full profile has no reason to.)
func checkNoDenied(t *testing.T, m *machine.Machine) {
	t.Helper()
	for _, b := range m.Buses() {
		if n := b.DeniedTotal(); n != 0 {
			t.Errorf("the %v bus denied %d guest accesses after resume; the VMM log lists them", b.Space(), n)
		}
	}
}

// powerOff powers the guest off and checks that the VMM ended with it.
func powerOff(t *testing.T, ctx context.Context, s *session.Session) {
	t.Helper()
	if err := s.Console.Send("poweroff\n"); err != nil {
		t.Fatal(err)
	}
	if exit, err := s.Wait(ctx); err != nil || exit != machine.ExitPoweroff {
		t.Fatalf("after poweroff: %v, %v; want poweroff", exit, err)
	}
}
