// Package lab runs commands with a working /dev/kvm on hosts that have none.
//
// It boots "L1", a QEMU VM under TCG whose emulated CPU (-cpu max) has AMD
// SVM, with Debian's kernel (from package guestimage) and a small initramfs
// of our own: a static Go init and the KVM and 9p modules. Init loads the
// modules, checks /dev/kvm, mounts the host's root over 9p and chroots into
// it, so the command sees the host's files at their usual paths and dynamic
// host binaries run unchanged. The command runs as root, with L1's own /proc,
// /sys and /dev, a tmpfs as TMPDIR (unless its environment sets one) and
// EnvInside=1. Its stdout and stderr are streamed back over virtio serial
// ports; a third port carries its exit status. Then L1 powers off.
//
// The host's root is exported read-write: what the command writes outside
// /proc, /sys, /dev and TMPDIR lands on the host.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
	"github.com/bunkerbuild/bunkerbuild/internal/lab/labproto"
)

// EnvInside is set to "1" in the environment of every command the lab runs.
const EnvInside = labproto.EnvInside

// Defaults for the zero values of Config.
const (
	DefaultMemoryMiB   = 4096
	DefaultCPUs        = 2
	DefaultBootTimeout = 2 * time.Minute
	DefaultQEMU        = "qemu-system-x86_64"
)

// powerOffTimeout bounds how long L1 may take to power off after the
// command finished before QEMU is killed.
const powerOffTimeout = 30 * time.Second

// Config configures the lab. The zero value is ready to use.
type Config struct {
	// CacheDir holds the kernel and initramfs; default
	// guestimage.DefaultCacheDir().
	CacheDir string
	// MemoryMiB is L1's memory; default DefaultMemoryMiB. QEMU allocates
	// it as L1 touches it.
	MemoryMiB int
	// CPUs is L1's number of CPUs; default DefaultCPUs.
	CPUs int
	// QEMU is the qemu-system-x86_64 binary; default DefaultQEMU, looked
	// up in PATH.
	QEMU string
	// BootTimeout bounds the time from starting QEMU to init reporting
	// that L1 is ready; default DefaultBootTimeout.
	BootTimeout time.Duration
	// Progress receives one line per step ("lab: ..."); nil discards them.
	Progress io.Writer
	// Console receives L1's serial console (kernel and init messages) and
	// QEMU's own messages; nil discards them. Errors quote its end either
	// way.
	Console io.Writer
}

func (cfg Config) withDefaults() Config {
	if cfg.CacheDir == "" {
		cfg.CacheDir = guestimage.DefaultCacheDir()
	}
	if cfg.MemoryMiB <= 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.CPUs <= 0 {
		cfg.CPUs = DefaultCPUs
	}
	if cfg.QEMU == "" {
		cfg.QEMU = DefaultQEMU
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	return cfg
}

func (cfg Config) progressf(format string, args ...any) {
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "lab: "+format+"\n", args...)
	}
}

// progressWriter returns Progress, or io.Discard if it is nil.
func (cfg Config) progressWriter() io.Writer {
	if cfg.Progress == nil {
		return io.Discard
	}
	return cfg.Progress
}

// Command is what Run runs inside L1.
type Command struct {
	// Args is the command and its arguments. Args[0] is looked up in the
	// PATH of Env when it has no slash.
	Args []string
	// Env is the command's environment (see the package doc for what the
	// lab adds).
	Env []string
	// Dir is the working directory, an absolute host path; default "/".
	Dir string
	// Stdout and Stderr receive the command's output as it comes; nil
	// discards it. The command's stdin is /dev/null.
	Stdout, Stderr io.Writer
}

// Run boots L1, runs c in it and returns the command's exit code: its exit
// status, or 128+N if signal N killed it. A non-nil error means the lab
// failed (L1 did not boot, /dev/kvm did not work, the command could not be
// started, ctx ended) and says why; the exit code is then -1. Run builds the
// kernel and initramfs into the cache if needed, but does not install QEMU:
// see Prepare.
func Run(ctx context.Context, cfg Config, c Command) (int, error) {
	cfg = cfg.withDefaults()
	if len(c.Args) == 0 {
		return -1, errors.New("lab: run: no command")
	}
	qemu, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return -1, fmt.Errorf("lab: find QEMU (run `bunkerlab prepare`): %w", err)
	}
	k, err := kernelTree(ctx, cfg)
	if err != nil {
		return -1, fmt.Errorf("lab: %w", err)
	}
	base, err := initramfs(ctx, cfg, k)
	if err != nil {
		return -1, fmt.Errorf("lab: %w", err)
	}
	runDir, err := os.MkdirTemp("", "bunkerlab-")
	if err != nil {
		return -1, fmt.Errorf("lab: make run directory: %w", err)
	}
	defer os.RemoveAll(runDir)
	p := qemuParams{
		kernel: k.vmlinuz, initrd: filepath.Join(runDir, "initrd"),
		memMiB: cfg.MemoryMiB, cpus: cfg.CPUs, runDir: runDir,
	}
	if err := writeRunInitrd(p.initrd, base, labproto.Request{Args: c.Args, Env: c.Env, Dir: c.Dir}); err != nil {
		return -1, fmt.Errorf("lab: %w", err)
	}
	cfg.progressf("booting L1: %s, TCG -cpu max, %d CPUs, %d MiB, kernel %s", qemu, p.cpus, p.memMiB, k.version)
	st, err := cfg.boot(ctx, qemu, p, c.Stdout, c.Stderr)
	if err != nil {
		return -1, fmt.Errorf("lab: %w", err)
	}
	return exitCode(st), nil
}

// exitCode maps a final status to a shell-style exit code.
func exitCode(st labproto.Status) int {
	if st.Kind == labproto.Signal {
		return 128 + st.Code
	}
	return st.Code
}

// boot runs QEMU with p until L1 powers off and returns the command's final
// status (Exit or Signal).
func (cfg Config) boot(ctx context.Context, qemu string, p qemuParams, stdout, stderr io.Writer) (labproto.Status, error) {
	listeners, err := listenPorts(p.runDir)
	if err != nil {
		return labproto.Status{}, err
	}
	defer closeAll(listeners)

	console := &tailBuffer{max: 16 << 10}
	var out io.Writer = console
	if cfg.Console != nil {
		out = io.MultiWriter(console, cfg.Console)
	}
	q := exec.CommandContext(ctx, qemu, qemuArgs(p)...)
	q.Stdout, q.Stderr = out, out
	q.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := q.Start(); err != nil {
		return labproto.Status{}, fmt.Errorf("start %s: %w", qemu, err)
	}

	statuses := make(chan labproto.Status, 4)
	var wg sync.WaitGroup
	wg.Go(func() { cfg.copyPort(listeners[labproto.PortStdout], stdout, "stdout") })
	wg.Go(func() { cfg.copyPort(listeners[labproto.PortStderr], stderr, "stderr") })
	wg.Go(func() { readStatuses(listeners[labproto.PortStatus], statuses) })
	exited := make(chan error, 1)
	go func() { exited <- q.Wait() }()

	w := watcher{cfg: cfg, start: start}
	bootTimer := time.NewTimer(cfg.BootTimeout)
	defer bootTimer.Stop()
	var offTimer <-chan time.Time
	var qemuErr error
wait:
	for {
		select {
		case st := <-statuses:
			if w.observe(st) {
				offTimer = time.After(powerOffTimeout)
			}
		case <-bootTimer.C:
			if !w.ready && w.final == nil {
				w.failure = fmt.Errorf("L1 did not report ready within %v", cfg.BootTimeout)
				q.Process.Kill()
			}
		case <-offTimer:
			cfg.progressf("L1 did not power off within %v of the command's end; killing QEMU", powerOffTimeout)
			q.Process.Kill()
		case qemuErr = <-exited:
			break wait
		}
	}
	// QEMU closed its sockets; unblock listeners it never connected to and
	// let the copies drain what the sockets still hold.
	closeAll(listeners)
	wg.Wait()
	for len(statuses) > 0 {
		w.observe(<-statuses)
	}
	return w.result(ctx, qemuErr, console.String())
}

// watcher follows the status lines of one boot.
type watcher struct {
	cfg     Config
	start   time.Time
	readyAt time.Time
	ready   bool
	final   *labproto.Status
	failure error
}

// observe records st and reports whether it is final.
func (w *watcher) observe(st labproto.Status) bool {
	if st.Kind == labproto.Ready && !w.ready && w.final == nil {
		w.ready, w.readyAt = true, time.Now()
		w.cfg.progressf("L1 ready after %.1fs: %s", time.Since(w.start).Seconds(), st.Detail)
		return false
	}
	if w.final != nil {
		return false
	}
	w.final = &st
	switch st.Kind {
	case labproto.Exit:
		w.cfg.progressf("command exited %d after %.1fs", st.Code, time.Since(w.readyAt).Seconds())
	case labproto.Signal:
		w.cfg.progressf("command killed by signal %d after %.1fs", st.Code, time.Since(w.readyAt).Seconds())
	}
	return true
}

// result turns what the boot saw into Run's answer.
func (w *watcher) result(ctx context.Context, qemuErr error, console string) (labproto.Status, error) {
	switch {
	case ctx.Err() != nil:
		return labproto.Status{}, context.Cause(ctx)
	case w.final != nil && w.final.Kind == labproto.Fail && w.ready:
		return labproto.Status{}, fmt.Errorf("L1 init: %s", w.final.Detail)
	case w.final != nil && w.final.Kind == labproto.Fail:
		return labproto.Status{}, fmt.Errorf("L1 init failed: %s%s", w.final.Detail, consoleTail(console))
	case w.final != nil:
		return *w.final, nil
	case w.failure != nil:
		return labproto.Status{}, fmt.Errorf("%w%s", w.failure, consoleTail(console))
	case !w.ready:
		return labproto.Status{}, fmt.Errorf("L1 stopped before it was ready (qemu: %v)%s", qemuErr, consoleTail(console))
	default:
		return labproto.Status{}, fmt.Errorf("L1 stopped before the command finished (qemu: %v)%s", qemuErr, consoleTail(console))
	}
}

// listenPorts listens on the socket of each port in runDir.
func listenPorts(runDir string) (map[string]net.Listener, error) {
	ls := make(map[string]net.Listener)
	for _, port := range ports {
		ln, err := net.Listen("unix", socketPath(runDir, port))
		if err != nil {
			closeAll(ls)
			return nil, fmt.Errorf("listen for port %s: %w", port, err)
		}
		ls[port] = ln
	}
	return ls, nil
}

func closeAll(ls map[string]net.Listener) {
	for _, ln := range ls {
		ln.Close()
	}
}

// copyPort copies what QEMU sends on the port's socket to w. If w fails,
// the rest is discarded so that L1 never blocks on a full port.
func (cfg Config) copyPort(ln net.Listener, w io.Writer, what string) {
	conn, err := ln.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	if w == nil {
		w = io.Discard
	}
	if _, err := io.Copy(w, conn); err != nil {
		cfg.progressf("command %s: %v; discarding the rest", what, err)
		io.Copy(io.Discard, conn)
	}
}

// readStatuses parses status lines from the port's socket into statuses,
// until a final one. A malformed line is reported as a Fail status.
func readStatuses(ln net.Listener, statuses chan<- labproto.Status) {
	conn, err := ln.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			st, perr := labproto.ParseStatus(line)
			if perr != nil {
				st = labproto.Status{Kind: labproto.Fail, Detail: perr.Error()}
			}
			statuses <- st
			if st.Kind != labproto.Ready {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// oopsMarkers start a kernel's report of its own failure.
var oopsMarkers = []string{"BUG: ", "Oops: ", "general protection fault", "Kernel panic", "WARNING: CPU"}

// consoleTail formats the last lines of L1's console for an error message;
// when L1's kernel reported a failure, the report from its first line
// (what failed, not only the stack it ended with), up to a bound.
func consoleTail(console string) string {
	const maxLines, maxReport = 25, 80
	ls := strings.Split(strings.TrimRight(console, "\n"), "\n")
	from := max(len(ls)-maxLines, 0)
	for i := max(len(ls)-maxReport, 0); i < from; i++ {
		if slices.ContainsFunc(oopsMarkers, func(m string) bool { return strings.Contains(ls[i], m) }) {
			from = i
			break
		}
	}
	s := strings.Join(ls[from:], "\n")
	if strings.TrimSpace(s) == "" {
		return "; the console was empty"
	}
	return "; end of the console:\n" + s
}
