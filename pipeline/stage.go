package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// StageSpec tells the boot stage what to boot and when to capture it. The
// parent writes it as SpecFile in the stage's output directory.
type StageSpec struct {
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline"`
	// Firmware, instead of Kernel, boots the BIOS image at this path,
	// which boots the first disk.
	Firmware string `json:"firmware,omitempty"`
	Memory   uint64 `json:"memory"`
	CPUs     int    `json:"cpus"`

	// Exactly one booted condition.
	Console    string        `json:"console,omitempty"`     // regexp matched per console line
	LegacyIdle time.Duration `json:"legacy_idle,omitempty"` // no legacy entry touched for this long

	Settle  time.Duration `json:"settle"`
	Timeout time.Duration `json:"timeout"`

	// Disks are the machine's disks, files in the stage directory that
	// the parent made; NIC adds a disconnected NIC.
	Disks []StageDisk `json:"disks,omitempty"`
	NIC   bool        `json:"nic,omitempty"`
}

// StageDisk is a disk of the boot stage.
type StageDisk struct {
	File     string `json:"file"` // a name in the stage directory
	ID       string `json:"id"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Files in a boot stage's output directory.
const (
	SpecFile    = "spec.json"
	StateFile   = "state.json"
	ConsoleFile = "console.log"
	// OtherConsoleFile has the output of the console that is not the
	// guest's /dev/console (the serial port when it is hvc0): kernel
	// messages, again.
	OtherConsoleFile = "console-other.log"
	VMMLogFile       = "vmm.log"
	TimingFile       = "timing.json"
	memoryFile       = "memory-%d.raw"
)

// maxStateSize bounds the state file the parent reads from the child.
const maxStateSize = 16 << 20

// RunStage is the boot stage, run in the isolated child: it boots the guest
// of dir/spec.json on the full profile, waits until it has booted and
// settled, pauses and captures it, and writes the capture into dir.
func RunStage(ctx context.Context, dir string, progress io.Writer) error {
	var spec StageSpec
	b, err := os.ReadFile(filepath.Join(dir, SpecFile))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("%s: %w", SpecFile, err)
	}
	var cond *regexp.Regexp
	if spec.Console != "" {
		if cond, err = regexp.Compile("(?m)" + spec.Console); err != nil {
			return fmt.Errorf("booted condition: %w", err)
		}
	} else if spec.LegacyIdle <= 0 {
		return errors.New("the stage spec has no booted condition")
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()

	vmmLog, err := os.Create(filepath.Join(dir, VMMLogFile))
	if err != nil {
		return err
	}
	defer vmmLog.Close()
	cfg := machine.Config{Profile: inventory.Full, Handoff: true, Policy: bus.Deny, Memory: spec.Memory, CPUs: spec.CPUs,
		Cmdline: spec.Cmdline, Log: log.New(vmmLog, "", log.Lmicroseconds)}
	switch {
	case spec.Firmware != "" && spec.Kernel != "":
		return errors.New("the stage spec names a kernel and firmware")
	case spec.Firmware != "":
		cfg.Profile = inventory.FullFirmware
		if cfg.Firmware, err = machine.ReadFirmware(spec.Firmware); err != nil {
			return err
		}
	default:
		kernel, err := os.Open(spec.Kernel)
		if err != nil {
			return err
		}
		defer kernel.Close()
		if cfg.Kernel, err = section(kernel); err != nil {
			return err
		}
	}
	if spec.Initrd != "" {
		f, err := os.Open(spec.Initrd)
		if err != nil {
			return err
		}
		defer f.Close()
		if cfg.Initrd, err = section(f); err != nil {
			return err
		}
	}
	for _, d := range spec.Disks {
		if d.File != filepath.Base(d.File) || d.File == "." || d.File == ".." {
			return fmt.Errorf("stage spec: disk file %q is not a name in the stage directory", d.File)
		}
		flag := os.O_RDWR
		if d.ReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(filepath.Join(dir, d.File), flag, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.Disks = append(cfg.Disks, machine.Disk{File: f, ReadOnly: d.ReadOnly, ID: d.ID})
	}
	if spec.NIC {
		cfg.NIC = &machine.NIC{} // disconnected: nothing leaves the build
	}
	consoleLog, err := os.Create(filepath.Join(dir, ConsoleFile))
	if err != nil {
		return err
	}
	defer consoleLog.Close()
	otherLog, err := os.Create(filepath.Join(dir, OtherConsoleFile))
	if err != nil {
		return err
	}
	defer otherLog.Close()
	// The booted line may come on either console: the VMM guesses which
	// is /dev/console from the command line, which a firmware boot of a
	// given disk does not know (the disk's boot loader has it).
	other := console.New(nil, otherLog)
	cfg.OtherConsoleOut = other

	start := time.Now()
	s, err := session.Start(ctx, cfg, consoleLog)
	if err != nil {
		return err
	}
	defer s.Close()
	if cond != nil {
		if err := expectEither(ctx, cond, s.Console, other); err != nil {
			return fmt.Errorf("waiting for the console to match %q: %w", spec.Console, err)
		}
	} else if err := waitLegacyIdle(ctx, s.Machine, spec.LegacyIdle); err != nil {
		return err
	}
	fmt.Fprintf(progress, "booted after %v; settling for %v\n", time.Since(start).Round(time.Millisecond), spec.Settle)
	var denied uint64
	for _, b := range s.Machine.Buses() {
		denied += b.DeniedTotal()
	}
	fmt.Fprintf(progress, "%d guest accesses outside the full profile's inventory were denied while booting\n", denied)
	select {
	case <-time.After(spec.Settle):
	case <-ctx.Done():
		return fmt.Errorf("settling: %w", context.Cause(ctx))
	}
	booted := time.Since(start)
	pause := time.Now()
	s.Machine.Pause()
	st, err := s.Machine.Capture()
	if err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	if err := writeMemory(dir, s.Machine.Memory()); err != nil {
		return err
	}
	b, err = json.Marshal(st)
	if err != nil {
		return err
	}
	if err := fsutil.WriteBytes(filepath.Join(dir, StateFile), 0o600, b); err != nil {
		return err
	}
	timing := StageTiming{Boot: booted, Capture: time.Since(pause)}
	fmt.Fprintf(progress, "captured %d vCPUs and %d MiB of memory in %v\n", len(st.VCPUs), st.Memory>>20, timing.Capture.Round(time.Millisecond))
	b, err = json.Marshal(timing)
	if err != nil {
		return err
	}
	return fsutil.WriteBytes(filepath.Join(dir, TimingFile), 0o600, b)
}

// StageTiming is how long the boot stage took: from power-on until the
// booted condition held and the guest had settled, and from the pause
// until the capture was written.
type StageTiming struct {
	Boot    time.Duration `json:"boot"`
	Capture time.Duration `json:"capture"`
}

func section(f *os.File) (machine.Image, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return io.NewSectionReader(f, 0, st.Size()), nil
}

// waitLegacyIdle waits until no legacy inventory entry has been touched for
// idle, after at least one has been.
func waitLegacyIdle(ctx context.Context, m *machine.Machine, idle time.Duration) error {
	tick := time.NewTicker(min(idle/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		var last time.Time
		for _, b := range m.Buses() {
			for _, s := range b.Stats() {
				if s.Entry.Class == inventory.Legacy && s.Last.After(last) {
					last = s.Last
				}
			}
		}
		if !last.IsZero() && time.Since(last) >= idle {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the legacy devices to be idle for %v (last access %v): %w", idle, last.Format(time.TimeOnly), context.Cause(ctx))
		}
	}
}

// writeMemory writes each RAM region to its own file, leaving holes for
// zero pages.
func writeMemory(dir string, g *memory.Guest) error {
	regions, maps := g.Regions()
	for i := range regions {
		name := filepath.Join(dir, fmt.Sprintf(memoryFile, i))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		err = writeSparse(f, maps[i])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write guest memory to %s: %w", name, err)
		}
	}
	return nil
}

func writeSparse(f *os.File, mem []byte) error {
	if err := f.Truncate(int64(len(mem))); err != nil {
		return err
	}
	const page = memory.PageSize
	for off := 0; off < len(mem); off += page {
		p := mem[off : off+page]
		if isZero(p) {
			continue
		}
		if _, err := f.WriteAt(p, int64(off)); err != nil {
			return err
		}
	}
	return f.Sync()
}

var zeroPage [memory.PageSize]byte

func isZero(p []byte) bool { return bytes.Equal(p, zeroPage[:len(p)]) }

// expectEither waits until one of the consoles' output matches re, and
// returns the first console's error if none does.
func expectEither(ctx context.Context, re *regexp.Regexp, cs ...*console.Console) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(cs))
	for _, c := range cs {
		go func() {
			_, err := c.Expect(ctx, re)
			errs <- err
		}()
	}
	var first error
	for range cs {
		if err := <-errs; err == nil {
			return nil
		} else if first == nil {
			first = err
		}
	}
	return first
}
