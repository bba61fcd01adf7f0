package isolate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	Init()
	if mode := os.Getenv(envChild); mode != "" {
		os.Exit(childMain(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// requireSandbox fails t if sandboxes cannot be made here.
func requireSandbox(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		t.Fatalf("sandboxes cannot be created here (these tests need root, or unprivileged user namespaces): %v", err)
	}
}

// runChild runs child mode of this test binary in a sandbox made from s,
// and returns its stdout.
func runChild(t testing.TB, s Spec, mode string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	s.Args = append([]string{exePath()}, args...)
	s.Env = append(s.Env, envChild+"="+mode)
	s.Stdout, s.Stderr = &out, &errb
	err := Run(context.Background(), s)
	if errb.Len() > 0 {
		t.Logf("child stderr: %s", errb.String())
	}
	return out.String(), err
}

// hostKVM says whether this process can open /dev/kvm.
func hostKVM() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// sandboxReport runs the report mode in a typical sandbox and checks what
// every sandbox must show.
func sandboxReport(t *testing.T) {
	requireSandbox(t)
	dir := t.TempDir()
	input := filepath.Join(dir, "input.txt")
	if err := os.WriteFile(input, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	inDir := filepath.Join(dir, "indir")
	if err := os.Mkdir(inDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "not-an-input")
	if err := os.WriteFile(secret, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := Spec{
		Inputs: []string{input, inDir},
		Output: out,
		Dir:    out,
		Limits: Limits{OpenFiles: 64, AddressSpace: 8 << 30, CPUTime: 1500 * time.Millisecond, FileSize: 1 << 20, Processes: 4096},
	}
	kvm := hostKVM()
	if kvm {
		s.Devices = []string{"/dev/kvm"}
	}
	checks := []string{
		"r:" + input, "w:" + input, "c:" + inDir, "c:" + out, "c:/", "c:/tmp", "c:/dev",
		"x:" + secret, "x:/etc/passwd", "x:/etc", "x:/root", "x:/home", "x:/usr", "x:/sys", "x:/run",
		"x:/proc/sys", "x:/proc/kcore", "x:/proc/sysrq-trigger", "w:/proc/self/comm",
		"w:/dev/null", "r:/dev/urandom", "x:/dev/kvm",
	}
	stdout, err := runChild(t, s, "report", checks...)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var r report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("decoding the report %q: %v", stdout, err)
	}

	if r.Hostname != Hostname {
		t.Errorf("hostname %q, want %q", r.Hostname, Hostname)
	}
	if r.PID != 1 || r.PPID != 0 {
		t.Errorf("pid %d ppid %d, want 1 and 0 (a new PID namespace)", r.PID, r.PPID)
	}
	if !slices.Equal(r.Procs, []string{"1"}) {
		t.Errorf("/proc shows processes %v, want only [1]", r.Procs)
	}
	if r.UID != 0 || r.GID != 0 {
		t.Errorf("uid %d gid %d, want 0 0", r.UID, r.GID)
	}
	if os.Geteuid() == 0 && len(r.Groups) > 0 {
		t.Errorf("supplementary groups %v, want none", r.Groups)
	}
	if !slices.Equal(r.Interfaces, []string{"lo"}) || r.LoopUp {
		t.Errorf("network interfaces %v (lo up: %v), want only lo, down", r.Interfaces, r.LoopUp)
	}
	if r.ConnectErr != unix.ENETUNREACH.Error() {
		t.Errorf("connect to 192.0.2.1: %q, want %q", r.ConnectErr, unix.ENETUNREACH.Error())
	}
	// Everything the sandbox shows lives under these top-level names.
	wantRoot := map[string]bool{"dev": true, "proc": true, "tmp": true}
	shown := []string{exePath(), input, inDir, out}
	deps, err := elfDeps(exePath()) // with -race, this binary is dynamic
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps {
		shown = append(shown, d.Target)
	}
	for _, p := range shown {
		wantRoot[strings.Split(p, "/")[1]] = true
	}
	for _, n := range r.Root {
		if !wantRoot[n] {
			t.Errorf("/ shows %q; want only %v", n, wantRoot)
		}
	}
	wantDev := []string{"fd", "full", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"}
	if kvm {
		wantDev = append(wantDev, "kvm")
	}
	for _, p := range shown { // the nested lab has TMPDIR=/dev/shm
		if rest, ok := strings.CutPrefix(p, "/dev/"); ok {
			if n, _, _ := strings.Cut(rest, "/"); !slices.Contains(wantDev, n) {
				wantDev = append(wantDev, n)
			}
		}
	}
	if got := sortedCopy(r.Dev); !slices.Equal(got, sortedCopy(wantDev)) {
		t.Errorf("/dev has %v, want %v", got, sortedCopy(wantDev))
	}
	if r.Cwd != out {
		t.Errorf("working directory %q, want %q", r.Cwd, out)
	}

	const (
		ok     = "ok"
		absent = "no such file or directory"
		ro     = "read-only file system"
	)
	want := map[string]string{
		"r:" + input: ok, "w:" + input: ro, "c:" + inDir: ro, "c:" + out: ok,
		"c:/": ro, "c:/tmp": ok, "c:/dev": ro,
		"x:" + secret: absent, "x:/etc/passwd": absent, "x:/etc": absent, "x:/root": absent,
		"x:/home": absent, "x:/usr": absent, "x:/sys": absent, "x:/run": absent,
		"x:/proc/sys": absent, "x:/proc/kcore": absent, "x:/proc/sysrq-trigger": absent,
		"w:/proc/self/comm": ro, "w:/dev/null": ok, "r:/dev/urandom": ok,
		"x:/dev/kvm": map[bool]string{true: ok, false: absent}[kvm],
	}
	for _, c := range checks {
		if r.Checks[c] != want[c] {
			t.Errorf("%s: %q, want %q", c, r.Checks[c], want[c])
		}
	}
	if b, err := os.ReadFile(filepath.Join(out, "created-inside")); err != nil || string(b) != "from the sandbox" {
		t.Errorf("the child's write to the output dir, read on the host: %q, %v", b, err)
	}
	if b, _ := os.ReadFile(input); string(b) != "hello" {
		t.Errorf("input changed to %q", b)
	}

	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if r.Status[k] != "0000000000000000" {
			t.Errorf("%s = %q, want no capabilities", k, r.Status[k])
		}
	}
	if r.Status["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs = %q, want 1", r.Status["NoNewPrivs"])
	}
	for name, want := range map[string]uint64{"NOFILE": 64, "AS": 8 << 30, "CPU": 2, "FSIZE": 1 << 20, "CORE": 0, "NPROC": 4096} {
		if got := r.Rlimits[name]; got != [2]uint64{want, want} {
			t.Errorf("RLIMIT_%s = %v, want soft and hard %d", name, got, want)
		}
	}
}

func TestSandbox(t *testing.T) { sandboxReport(t) }

// TestSandboxWithoutUserNamespace is the root caller's fallback where user
// namespaces are disabled.
func TestSandboxWithoutUserNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root can create namespaces without a user namespace")
	}
	noUserNS = true
	t.Cleanup(func() { noUserNS = false })
	sandboxReport(t)
}

// TestSandboxUnprivileged runs TestSandbox again as an unprivileged user
// (nobody), through a world-readable copy of this test binary.
func TestSandboxUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("run as root, this test runs TestSandbox as nobody; as another user TestSandbox already did")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	dir, err := os.MkdirTemp("", "isolate-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "isolate.test")
	if err := copyFile(exePath(), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func(env string, args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "TMPDIR=/tmp", "HOME=/", env}
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return cmd
	}
	// Unprivileged user namespaces may be off here, or not allowed (in
	// a chroot, such as the nested lab's): then there is nothing to test.
	if out, err := asNobody(envChild + "=available").CombinedOutput(); err != nil {
		t.Skipf("nobody cannot create sandboxes here: %s", bytes.TrimSpace(out))
	}
	out, err := asNobody("", "-test.run=^TestSandbox$", "-test.count=1", "-test.v").CombinedOutput()
	if err != nil {
		t.Fatalf("TestSandbox as nobody: %v\n%s", err, out)
	}
	t.Logf("as nobody:\n%s", out)
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

func TestKVM(t *testing.T) {
	requireSandbox(t)
	if !hostKVM() {
		t.Skip("this process cannot open /dev/kvm")
	}
	host := kvmProbe()
	got, err := runChild(t, Spec{Devices: []string{"/dev/kvm"}}, "kvm")
	if err != nil {
		t.Fatal(err)
	}
	if got = strings.TrimSpace(got); got != host || !strings.HasPrefix(got, "api=12 ") {
		t.Errorf("in the sandbox with /dev/kvm: %q; on the host: %q", got, host)
	}
	got, err = runChild(t, Spec{}, "kvm")
	if err != nil {
		t.Fatal(err)
	}
	if want := "open: " + unix.ENOENT.Error(); strings.TrimSpace(got) != want {
		t.Errorf("in the sandbox without devices: %q, want %q", got, want)
	}
}

func TestOpenFilesLimit(t *testing.T) {
	requireSandbox(t)
	got, err := runChild(t, Spec{Limits: Limits{OpenFiles: 16}}, "nofile")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var msg string
	if _, err := fmt.Sscanf(got, "%d %s", &n, &msg); err != nil {
		t.Fatalf("child said %q: %v", got, err)
	}
	if n >= 16 || !strings.Contains(got, unix.EMFILE.Error()) {
		t.Errorf("child opened %d files before %q; want EMFILE before 16", n, got)
	}
}

func TestExitStatus(t *testing.T) {
	requireSandbox(t)
	if _, err := runChild(t, Spec{}, "exit", "0"); err != nil {
		t.Errorf("exit 0: %v", err)
	}
	_, err := runChild(t, Spec{}, "exit", "7")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("exit 7: got %v, want an *exec.ExitError with status 7", err)
	}
	if msg := err.Error(); !strings.Contains(msg, exePath()) || !strings.Contains(msg, "exit status 7") {
		t.Errorf("error %q does not name the program and its status", msg)
	}
	if errors.Is(err, ErrSetup) {
		t.Errorf("the child's own exit status is not a setup error: %v", err)
	}
}

// tokenProcs lists host processes whose command line contains token.
func tokenProcs(token string) []string {
	ents, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(b, []byte(token)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// startTree runs a sleeptree in a sandbox under ctx, waits until it says
// ready, and returns Run's result channel and the stdout pipe.
func startTree(t *testing.T, ctx context.Context, token string) (<-chan error, *os.File) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close() })
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Spec{
			Args:   []string{exePath(), token},
			Env:    []string{envChild + "=sleeptree"},
			Stdout: pw,
			Stderr: os.Stderr,
		})
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	pw.Close()
	if err != nil || line != "ready\n" {
		t.Fatalf("sandbox said %q, %v; want ready", line, err)
	}
	if n := len(tokenProcs(token)); n != 2 {
		t.Fatalf("%d processes with the token running, want 2 (child and grandchild)", n)
	}
	return done, pr
}

// checkGone checks that the sandbox's processes are gone and that no one
// holds its stdout.
func checkGone(t *testing.T, token string, stdout *os.File) {
	t.Helper()
	if p := tokenProcs(token); len(p) > 0 {
		t.Errorf("processes %v of the sandbox still running", p)
	}
	stdout.SetReadDeadline(time.Now().Add(2 * time.Second))
	if b, err := io.ReadAll(stdout); err != nil || len(b) > 0 {
		t.Errorf("the sandbox's stdout: read %q, %v; want EOF (no writer left)", b, err)
	}
}

func TestCancelKillsTree(t *testing.T) {
	requireSandbox(t)
	token := fmt.Sprintf("isolate-cancel-%d", time.Now().UnixNano())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, stdout := startTree(t, ctx, token)
	start := time.Now()
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after cancel")
	}
	t.Logf("Run returned %v after cancel: %v", time.Since(start), err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v, want an error wrapping context.Canceled", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("Run: %v, want an error wrapping *exec.ExitError", err)
	}
	checkGone(t, token, stdout)
}

func TestTimeout(t *testing.T) {
	requireSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := Run(ctx, Spec{Args: []string{exePath()}, Env: []string{envChild + "=sleep"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Run: %v, want an error wrapping context.DeadlineExceeded", err)
	}
}

// TestParentDeath kills the process that called Run; the kernel must kill
// the sandbox (PR_SET_PDEATHSIG on its PID 1).
func TestParentDeath(t *testing.T) {
	requireSandbox(t)
	token := fmt.Sprintf("isolate-orphan-%d", time.Now().UnixNano())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	parent := exec.Command(exePath(), token)
	parent.Env = []string{envChild + "=parent"}
	parent.Stdout, parent.Stderr = pw, os.Stderr
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if line, err := bufio.NewReader(pr).ReadString('\n'); err != nil || line != "ready\n" {
		parent.Process.Kill()
		parent.Wait()
		t.Fatalf("sandbox said %q, %v; want ready", line, err)
	}
	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	parent.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for len(tokenProcs(token)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	checkGone(t, token, pr)
}

func TestSetupErrors(t *testing.T) {
	requireSandbox(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	exe := exePath()
	for _, tc := range []struct {
		name  string
		spec  Spec
		want  string
		setup bool // an ErrSetup from inside the sandbox
	}{
		{"no such input", Spec{Args: []string{exe}, Inputs: []string{dir + "/nope"}}, "no such file", false},
		{"output is a file", Spec{Args: []string{exe}, Output: file}, "is not a directory", false},
		{"device is a file", Spec{Args: []string{exe}, Devices: []string{file}}, "is not a device node", false},
		{"input under /proc", Spec{Args: []string{exe}, Inputs: []string{"/proc/cpuinfo"}}, "under /proc", false},
		{"input is /", Spec{Args: []string{exe}, Inputs: []string{"/"}}, "would hide", false},
		{"input inside output", Spec{Args: []string{exe}, Inputs: []string{file}, Output: dir}, "inside the output", false},
		{"script", Spec{Args: []string{file}}, "not an ELF executable", false},
		{"no such program", Spec{Args: []string{"no-such-program-here"}}, "executable file not found", false},
		{"relative dir", Spec{Args: []string{exe}, Dir: "tmp"}, "not absolute", false},
		{"no such dir inside", Spec{Args: []string{exe}, Dir: "/nope"}, "working directory: chdir /nope: no such file", true},
		{"limit above hard", Spec{Args: []string{exe}, Limits: Limits{OpenFiles: 1 << 40}}, "RLIMIT_NOFILE", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(context.Background(), tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want an error containing %q", err, tc.want)
			}
			if errors.Is(err, ErrSetup) != tc.setup {
				t.Errorf("Run: %v: errors.Is(ErrSetup) = %v, want %v", err, !tc.setup, tc.setup)
			}
		})
	}
	initCalled.Store(false)
	err := Run(context.Background(), Spec{Args: []string{exe}})
	initCalled.Store(true)
	if err == nil || !strings.Contains(err.Error(), "Init was not called") {
		t.Errorf("Run without Init: %v", err)
	}
}

// TestDynamicProgram runs a dynamically linked system program: its ELF
// interpreter and libraries must be bound in.
func TestDynamicProgram(t *testing.T) {
	requireSandbox(t)
	for _, p := range []string{"/bin/true", "/bin/false"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("no %s here", p)
		}
	}
	deps, err := elfDeps("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if len(deps) == 0 {
		t.Skip("/bin/true is statically linked here")
	}
	t.Logf("/bin/true needs %v", deps)
	if err := Run(context.Background(), Spec{Args: []string{"/bin/true"}}); err != nil {
		t.Errorf("/bin/true: %v", err)
	}
	err = Run(context.Background(), Spec{Args: []string{"/bin/false"}})
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("/bin/false: %v, want exit status 1", err)
	}
}

func TestElfDepsOfThisBinary(t *testing.T) {
	deps, err := elfDeps(exePath())
	if err != nil {
		t.Fatal(err)
	}
	// Go binaries without cgo are static; with cgo they need libc.
	for _, d := range deps {
		if d.Kind != kindExec || !filepath.IsAbs(d.Target) || !filepath.IsAbs(d.Source) {
			t.Errorf("bad dependency %+v", d)
		}
	}
	t.Logf("this test binary needs %d other files", len(deps))
}

// TestStdio checks that stdin reaches the child and stdout comes back.
func TestStdio(t *testing.T) {
	requireSandbox(t)
	var out bytes.Buffer
	err := Run(context.Background(), Spec{
		Args:   []string{exePath(), "/dev/stdin"},
		Env:    []string{envChild + "=cat"},
		Stdin:  strings.NewReader("through the sandbox"),
		Stdout: &out,
		Stderr: os.Stderr,
	})
	if err != nil || out.String() != "through the sandbox" {
		t.Errorf("cat /dev/stdin: %q, %v", out.String(), err)
	}
}

// BenchmarkRun and BenchmarkExec measure what a sandbox adds to starting a
// process: both start this test binary, which exits at once.
func BenchmarkRun(b *testing.B) {
	requireSandbox(b)
	for b.Loop() {
		if err := Run(context.Background(), Spec{Args: []string{exePath(), "0"}, Env: []string{envChild + "=exit"}}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExec(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command(exePath(), "0")
		cmd.Env = []string{envChild + "=exit"}
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAvailable(b *testing.B) {
	for b.Loop() {
		if err := Available(); err != nil {
			b.Fatal(err)
		}
	}
}
