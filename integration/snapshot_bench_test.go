package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
)

// note prints the benchmark's progress as it goes (the testing package
// holds b.Log output until the benchmark ends).
func note(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// snapSample is one capture and the resumes of it.
type snapSample struct {
	boot, capture  time.Duration // power-on to booted; pause to snapshot written
	bytes          int64         // the snapshot's size
	nonZero        int64         // non-zero guest memory, where known
	resume         time.Duration // process start until the guest answers on its console, first resume
	again          time.Duration // the same, for the next resume of the same snapshot
	rss, pss       uint64        // KiB, summed over two concurrent resumes
	guestBytes     uint64
	resumeFailures int
}

var builtLine = regexp.MustCompile(`built .* \(boot ([0-9.]+[mµn]?s), capture ([0-9.]+[mµn]?s), sign ([0-9.]+[mµn]?s)\)`)

// BenchmarkSnapshot captures the default guest (2 vCPUs, 512 MiB) once
// booted and resumes it, on our pipeline (bunkerbuild build, then
// bunkerbuild resume of the signed artifact) and on QEMU (stop, migrate to
// a file, then -incoming from the file), b.N times each, and prints a
// table: capture time, snapshot size against guest memory and non-zero
// memory, resume latency (process start until the guest answers a command
// on its console: verification, restore and the first guest instructions
// included) and the resident memory of two concurrent resumes.
func BenchmarkSnapshot(b *testing.B) {
	buildVMM(b)
	const memMiB, cpus = 512, 2
	results := map[string][]snapSample{}
	for _, name := range []string{"bunkerbuild", "qemu -M pc"} {
		b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			for range b.N {
				ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
				var s snapSample
				var err error
				if name == "bunkerbuild" {
					s, err = snapshotOurs(ctx, b, memMiB, cpus)
				} else {
					s, err = snapshotQEMU(ctx, b, memMiB, cpus)
				}
				cancel()
				if err != nil {
					b.Fatalf("%s: %v", name, err)
				}
				results[name] = append(results[name], s)
			}
		})
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\n%-12s %4s %9s %9s %10s %9s %9s %10s %10s %12s %12s\n", "VMM", "runs", "boot", "capture", "snapshot", "/memory", "/nonzero", "resume", "again", "2x RSS MiB", "2x PSS MiB")
	for _, name := range []string{"bunkerbuild", "qemu -M pc"} {
		rs := results[name]
		if len(rs) == 0 {
			continue
		}
		med := func(f func(snapSample) time.Duration) time.Duration {
			var ds []time.Duration
			for _, r := range rs {
				ds = append(ds, f(r))
			}
			return median(ds)
		}
		last := rs[len(rs)-1]
		nz := "-"
		if last.nonZero > 0 {
			nz = fmt.Sprintf("%.3f", float64(last.bytes)/float64(last.nonZero))
		}
		fmt.Fprintf(&tbl, "%-12s %4d %9v %9v %7d MiB %9.3f %9s %10v %10v %12.1f %12.1f\n", name, len(rs),
			med(func(s snapSample) time.Duration { return s.boot }).Round(10*time.Millisecond),
			med(func(s snapSample) time.Duration { return s.capture }).Round(time.Millisecond),
			last.bytes>>20, float64(last.bytes)/float64(last.guestBytes), nz,
			med(func(s snapSample) time.Duration { return s.resume }).Round(time.Millisecond),
			med(func(s snapSample) time.Duration { return s.again }).Round(time.Millisecond),
			float64(last.rss)/1024, float64(last.pss)/1024)
	}
	fmt.Fprintf(&tbl, "guest: the default guest, %d MiB, %d vCPUs; median of the runs, sizes and memory of the last.\n", memMiB, cpus)
	fmt.Fprintf(&tbl, "resume: from process start until the guest's console answers (its tty echoes a newline), first resume after the capture; ours includes hashing every blob. again: the next resume; ours checks the signature and finds this host's stamp (snapshots.StampFile) instead of hashing again.\n")
	fmt.Fprintf(&tbl, "RSS/PSS: the two resumed VMM processes together, guest memory included, after both answered; PSS splits shared pages between them.\n")
	fmt.Print(tbl.String())
}

// snapshotOurs builds the default recipe's guest and resumes it twice at
// once.
func snapshotOurs(ctx context.Context, b *testing.B, memMiB, cpus int) (snapSample, error) {
	dir := b.TempDir()
	if _, err := snapshots.GenerateKey(filepath.Join(dir, "key"), filepath.Join(dir, "key.pub")); err != nil {
		return snapSample{}, err
	}
	rec := fmt.Sprintf("apiVersion: bunkerbuild/v1\nname: bench\nguest:\n  kernel: %s\n  initrd: %s\n  cmdline: %s\nmachine:\n  memory: %dM\n  cpus: %d\nbooted:\n  guest-signal: true\n  settle: 1s\n  timeout: 4m\noutput:\n  path: guest.snap\n  signing-key: key\n",
		os.Getenv(envKernel), os.Getenv(envInitrd), guestCmdline, memMiB, cpus)
	recipeFile := filepath.Join(dir, "guest.yaml")
	if err := os.WriteFile(recipeFile, []byte(rec), 0o644); err != nil {
		return snapSample{}, err
	}
	note("ours: building")
	_, progress, status, err := bunkerbuild(ctx, "build", recipeFile)
	if err != nil || status != 0 {
		return snapSample{}, fmt.Errorf("build: status %d, %v\n%s", status, err, progress)
	}
	note("ours: built")
	m := builtLine.FindStringSubmatch(progress)
	if m == nil {
		return snapSample{}, fmt.Errorf("build printed no timing line:\n%s", progress)
	}
	var s snapSample
	s.boot, _ = time.ParseDuration(m[1])
	s.capture, _ = time.ParseDuration(m[2])
	sign, _ := time.ParseDuration(m[3])
	s.capture += sign // capture, as QEMU's: until the snapshot is written (ours also signed)
	artifact := filepath.Join(dir, "guest.snap")
	a, err := snapshots.Open(artifact, mustPub(b, filepath.Join(dir, "key.pub")))
	if err != nil {
		return snapSample{}, err
	}
	s.bytes = a.Size()
	cfg := a.Config()
	s.nonZero = int64(cfg.Memory.StoredPages() * snapshots.PageSize)
	s.guestBytes = cfg.Memory.Size()
	a.Close()
	argv := []string{bunkerbuildBin, "resume", "--key", filepath.Join(dir, "key.pub"), artifact}
	note("ours: resuming")
	err = resumeAll(ctx, argv, &s)
	return s, err
}

// resumeAll measures a first resume of a snapshot, a second one, and
// then two at once, whose memory it reads once both answer.
func resumeAll(ctx context.Context, argv []string, s *snapSample) error {
	took, _, _, err := resumeAtOnce(ctx, argv, 1)
	if err != nil {
		return err
	}
	s.resume = took[0]
	if took, _, _, err = resumeAtOnce(ctx, argv, 1); err != nil {
		return err
	}
	s.again = took[0]
	_, s.rss, s.pss, err = resumeAtOnce(ctx, argv, 2)
	return err
}

// resumeAtOnce starts n resumes of one snapshot at once and returns how
// long each took to answer, and their resident and proportional memory
// once all answered.
func resumeAtOnce(ctx context.Context, argv []string, n int) (took []time.Duration, rss, pss uint64, err error) {
	type proc struct {
		i    int
		cmd  *exec.Cmd
		c    *console.Console
		took time.Duration
		err  error
	}
	procs := make([]*proc, n)
	done := make(chan *proc, n)
	for i := range procs {
		p := &proc{i: i, cmd: exec.CommandContext(ctx, argv[0], argv[1:]...)}
		stdin, err := p.cmd.StdinPipe()
		if err != nil {
			return nil, 0, 0, err
		}
		var stderr bytes.Buffer
		p.c = console.New(stdin, nil)
		p.cmd.Stdout, p.cmd.Stderr = p.c, &stderr
		procs[i] = p
		start := time.Now()
		if err := p.cmd.Start(); err != nil {
			return nil, 0, 0, err
		}
		defer func() { p.cmd.Process.Kill(); p.cmd.Wait() }()
		go func() {
			// Poke the console with a newline until the guest prints
			// anything: its tty echoing the newline, or a kernel message.
			// Either is the guest running again. Input sent while the VMM
			// is still loading may be dropped (QEMU's UART drops what
			// overflows its FIFO), so poke until it answers.
			anything := regexp.MustCompile(`[\s\S]`)
			for ctx.Err() == nil {
				p.c.Send("\n")
				pctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				_, err := p.c.Expect(pctx, anything)
				cancel()
				if err == nil {
					break
				}
			}
			p.took = time.Since(start)
			note("resume %d of %d answered after %v", p.i+1, n, p.took)
			out, status, err := p.c.Run(ctx, "echo resumed-$((40+2))")
			if err == nil && (status != 0 || !strings.Contains(out, "resumed-42")) {
				err = fmt.Errorf("the resumed guest answered %q, status %d", out, status)
			}
			if err != nil {
				err = fmt.Errorf("%w; stderr %q; console %q", err, stderr.String(), tail([]byte(p.c.Output())))
			}
			p.err = err
			done <- p
		}()
	}
	for range procs {
		if p := <-done; p.err != nil {
			return nil, 0, 0, p.err
		}
	}
	for _, p := range procs {
		took = append(took, p.took)
		r, ps, err := rollup(p.cmd.Process.Pid)
		if err != nil {
			return nil, 0, 0, err
		}
		rss += r
		pss += ps
	}
	return took, rss, pss, nil
}

// rollup returns a process's Rss and Pss in KiB.
func rollup(pid int) (rss, pss uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss, nil
}

// snapshotQEMU boots the default guest on QEMU, stops it and migrates it
// to a file once booted, then resumes two QEMUs from the file at once.
func snapshotQEMU(ctx context.Context, b *testing.B, memMiB, cpus int) (snapSample, error) {
	dir := b.TempDir()
	file := filepath.Join(dir, "vmstate")
	mon := filepath.Join(dir, "mon.sock")
	args := []string{"qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-cpu", "host",
		"-m", strconv.Itoa(memMiB), "-smp", strconv.Itoa(cpus), "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", os.Getenv(envKernel), "-initrd", os.Getenv(envInitrd), "-append", guestCmdline}
	// The source is stopped before it is saved; without the global state
	// in the stream the destination starts running as soon as it has
	// loaded it, as a resumed snapshot should (otherwise it stays paused
	// until told to continue).
	cmd := exec.CommandContext(ctx, args[0], append(args[1:], "-monitor", "unix:"+mon+",server=on,wait=off",
		"-global", "migration.store-global-state=off")...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return snapSample{}, err
	}
	c := console.New(stdin, nil)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = c, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return snapSample{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var s snapSample
	note("qemu: booting")
	if _, err := c.Expect(ctx, regexp.MustCompile(regexp.QuoteMeta(guestproto.ReadyLine))); err != nil {
		return s, fmt.Errorf("boot: %w; stderr %q", err, stderr.String())
	}
	s.boot = time.Since(start)
	// The same settle time as our recipe, and the shell's prompt.
	if _, err := c.Expect(ctx, regexp.MustCompile(`(?m)^\$ `)); err != nil {
		return s, err
	}
	time.Sleep(time.Second)
	s.boot += time.Second
	conn, err := net.Dial("unix", mon)
	if err != nil {
		return s, err
	}
	defer conn.Close()
	hmp := &hmp{conn: conn, r: bufio.NewReader(conn)}
	if _, err := hmp.cmd(""); err != nil { // the banner
		return s, err
	}
	note("qemu: booted; migrating to a file")
	pause := time.Now()
	if _, err := hmp.cmd("stop"); err != nil {
		return s, err
	}
	if _, err := hmp.cmd("migrate file:" + file); err != nil {
		return s, err
	}
	for {
		out, err := hmp.cmd("info migrate")
		if err != nil {
			return s, err
		}
		if strings.Contains(out, "Migration status: completed") {
			break
		}
		if strings.Contains(out, "failed") || strings.Contains(out, "cancelled") {
			return s, fmt.Errorf("migration: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.capture = time.Since(pause)
	st, err := os.Stat(file)
	if err != nil {
		return s, err
	}
	s.bytes, s.guestBytes = st.Size(), uint64(memMiB)<<20
	cmd.Process.Kill()
	cmd.Wait()
	note("qemu: captured in %v; resuming", s.capture)
	err = resumeAll(ctx, append(args, "-incoming", "file:"+file), &s)
	return s, err
}

// hmp talks to QEMU's human monitor over its socket.
type hmp struct {
	conn net.Conn
	r    *bufio.Reader
}

// cmd sends a command and returns its output, up to the next prompt.
func (h *hmp) cmd(line string) (string, error) {
	if line != "" {
		if _, err := io.WriteString(h.conn, line+"\n"); err != nil {
			return "", err
		}
	}
	h.conn.SetReadDeadline(time.Now().Add(time.Minute))
	var out strings.Builder
	for !strings.HasSuffix(out.String(), "(qemu) ") {
		b, err := h.r.ReadByte()
		if err != nil {
			return out.String(), fmt.Errorf("monitor: %w after %q", err, out.String())
		}
		out.WriteByte(b)
	}
	return out.String(), nil
}
