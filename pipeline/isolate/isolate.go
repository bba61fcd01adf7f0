// Package isolate runs a child process in a throwaway sandbox: new mount,
// PID, network, IPC, UTS, cgroup and user namespaces, an empty tmpfs root
// that shows only what the caller lists, no capabilities and
// no_new_privs. `bunkerbuild build` boots the guest in it.
//
// The program re-executes itself (/proc/self/exe) as the sandbox's init, so
// it must call Init first thing in main:
//
//	func main() {
//		isolate.Init()
//		...
//	}
//
// Init finishes entering the sandbox and then execs Spec.Args in place:
// the target runs as PID 1 of the new PID namespace, so when it exits, or is
// killed, the kernel kills everything else in the sandbox, and the mounts
// vanish with the mount namespace. Run kills PID 1 when its context is done
// (so a caller that turns Ctrl-C into a cancelled context cleans up), and
// the kernel kills it if the thread that called Run dies. Nothing is left
// on the host but what the child wrote to Spec.Output. As PID 1 the target
// does not get signals it has no handler for from inside the sandbox, and
// orphans it does not reap stay zombies until it exits.
//
// Inside the sandbox the child sees:
//
//	/                 an empty tmpfs, read-only once set up
//	/proc             a new procfs of this PID namespace, read-only, with
//	                  process directories only (subset=pid: no /proc/sys,
//	                  kcore, sysrq-trigger, cpuinfo, ...)
//	/dev              tmpfs, read-only: null, zero, full, random, urandom,
//	                  fd, stdin, stdout, stderr and Spec.Devices
//	/tmp              a private tmpfs (Limits.TmpSize), noexec
//	Spec.Inputs       read-only, noexec, nosuid, nodev, at their host paths
//	Spec.Output       read-write, noexec, nosuid, nodev, at its host path
//	Spec.Args[0]      read-only at its real host path, with its ELF
//	                  interpreter and shared libraries when it has them
//
// and no /sys, no network but a loopback interface that is down, hostname
// Hostname, and a session of its own (no controlling terminal).
//
// The child runs as uid 0 and gid 0 inside its user namespace. For a root
// caller that user namespace maps every id to itself, so the child can open
// root's device nodes (/dev/kvm is 0600 root) and what it writes to Output
// belongs to root; for another caller, uid and gid 0 map to the caller's,
// who needs unprivileged user namespaces. A root caller does without a user
// namespace where it cannot create one (user.max_user_namespaces = 0, or in
// a chroot such as the nested lab's); the child is then plain root. Either
// way it has no capabilities at all (effective, permitted, inheritable,
// ambient and bounding sets empty, SECBIT_NOROOT locked) and no
// supplementary groups (a non-root caller's stay), so it cannot mount,
// unshare, raise its limits, or regain privilege by exec. Not done:
// seccomp, cgroups (no memory or pids controller: the Limits are rlimits),
// LSM profiles.
//
// Isolate needs Linux 5.12 or later (open_tree, move_mount, mount_setattr).
package isolate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Hostname is the host name inside the sandbox.
const Hostname = "bunkerbuild-boot"

// ErrSetup marks errors in entering the sandbox, before the child runs:
// a namespace, mount, limit or the final exec failed.
var ErrSetup = errors.New("isolate: setting up the sandbox")

// Spec says what to run in the sandbox and what it may see.
type Spec struct {
	// Args is the command line. Args[0] is looked up in the host's PATH
	// (exec.LookPath) before entering, and must be an ELF executable;
	// the child runs it from its real path, so os.Executable() is the
	// way to run this program again.
	Args []string
	// Env is the child's whole environment.
	Env []string
	// Dir is the child's working directory inside; "" means "/".
	Dir string
	// Inputs are host files or directories made visible read-only and
	// noexec, at the same absolute paths (relative ones are made absolute).
	Inputs []string
	// Devices are host device nodes (such as /dev/kvm) made visible
	// read-write at the same paths.
	Devices []string
	// Output, if not "", is an existing host directory made visible
	// read-write at the same path: the only writable host path. The
	// caller creates it and removes it on failure.
	Output string
	// Limits are the child's resource limits.
	Limits Limits
	// Stdin, Stdout and Stderr are as in exec.Cmd: nil means /dev/null.
	// An *os.File is passed to the child as is.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Limits are resource limits (setrlimit) of the sandboxed process; each is
// set as both its soft and hard limit, and can only lower what the caller
// has. A zero field leaves the caller's limit. RLIMIT_CORE is always 0.
type Limits struct {
	// AddressSpace is RLIMIT_AS in bytes. A VMM maps all guest RAM, so
	// it needs the guest's memory size plus a few hundred MiB.
	AddressSpace uint64
	// OpenFiles is RLIMIT_NOFILE.
	OpenFiles uint64
	// Processes is RLIMIT_NPROC: processes and threads of the child's
	// host user. Linux does not enforce it for root (kuid 0), which the
	// child is when the caller is root.
	Processes uint64
	// CPUTime is RLIMIT_CPU, rounded up to whole seconds; the kernel
	// kills the child when it has used that much CPU time.
	CPUTime time.Duration
	// FileSize is RLIMIT_FSIZE: the largest file the child may write.
	FileSize uint64
	// TmpSize is the size of the private /tmp in bytes; 0 means
	// DefaultTmpSize.
	TmpSize uint64
}

// DefaultTmpSize is the size of the sandbox's /tmp when Limits.TmpSize is 0.
const DefaultTmpSize = 64 << 20

// envInit marks a process started by Run: its value is the fds of the
// config and status pipes.
const envInit = "_BUNKERBUILD_ISOLATE_INIT"

// argv0Init is argv[0] of the sandbox's init before it execs the target.
const argv0Init = "bunkerbuild-isolate-init"

// Fds of the two pipes in the sandbox's init: it reads its config on
// configFD and writes a setup error, if any, on statusFD, which closes on
// exec.
const (
	configFD = 3
	statusFD = 4
)

// exitSetup is the init's exit status when setup fails.
const exitSetup = 125

// initCalled records that Init ran, so Run can refuse to re-execute a
// program whose main would not enter the sandbox.
var initCalled atomic.Bool

// noUserNS, set by tests, makes Run create no user namespace (root only).
var noUserNS bool

// Run runs s.Args in a new sandbox and waits for it to exit. It returns nil
// if the child exits 0; an error wrapping *exec.ExitError, naming the
// program and its exit status, if it exits otherwise; an error wrapping
// ErrSetup if the sandbox could not be entered. When ctx is done Run kills
// the sandbox's PID 1, which kills every process in it, and returns an
// error that also wraps ctx.Err().
func Run(ctx context.Context, s Spec) error {
	cfg, err := plan(s)
	if err != nil {
		return err
	}
	return start(ctx, cfg, s.Stdin, s.Stdout, s.Stderr)
}

// Available reports whether this process can create sandboxes: it enters
// an empty one, exactly as Run would, and returns why that failed (Init not
// called from main, namespaces not permitted, kernel too old).
func Available() error {
	cfg, err := plan(Spec{})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return start(ctx, cfg, nil, nil, nil)
}

// start re-executes this program as the sandbox's init with cfg and waits.
func start(ctx context.Context, cfg *config, stdin io.Reader, stdout, stderr io.Writer) error {
	if !initCalled.Load() {
		return errors.New("isolate: Init was not called at the start of main; the sandbox would run main instead of entering")
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &st); err != nil {
		return fmt.Errorf("isolate: reading this process's mount namespace: %w", err)
	}
	cfg.ParentMountNS = st.Ino
	config, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("isolate: encoding the sandbox config: %w", err)
	}

	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("isolate: config pipe: %w", err)
	}
	defer cfgW.Close()
	defer cfgR.Close()
	statR, statW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("isolate: status pipe: %w", err)
	}
	defer statR.Close()
	defer statW.Close()

	newCmd := func(userNS bool) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "/proc/self/exe")
		cmd.Args = []string{argv0Init}
		cmd.Env = []string{fmt.Sprintf("%s=%d,%d", envInit, configFD, statusFD)}
		cmd.Dir = "/"
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
		cmd.ExtraFiles = []*os.File{cfgR, statW} // fds 3 and 4
		cmd.SysProcAttr = sysProcAttr(userNS)
		// If the child still shared a pipe with a process that
		// survived it (none can: they die with PID 1), Wait would
		// not wait for ever.
		cmd.WaitDelay = 5 * time.Second
		return cmd
	}

	// Pdeathsig fires when the thread that forked the child exits, not
	// the process (go.dev/issue/27505): keep this goroutine on its
	// thread until the child is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	userNS := useUserNS()
	cmd := newCmd(userNS)
	err = cmd.Start()
	if err != nil && userNS && os.Geteuid() == 0 && errors.Is(err, syscall.EPERM) {
		// A chrooted process may not create a user namespace (the
		// nested lab runs commands chrooted); root can do without.
		cmd = newCmd(false)
		err = cmd.Start()
	}
	if err != nil {
		return fmt.Errorf("%w: starting %s in new namespaces: %w", ErrSetup, "/proc/self/exe", err)
	}
	cfgR.Close()
	statW.Close()
	_, werr := cfgW.Write(config)
	cfgW.Close()
	// The init writes a setup error here, or nothing before the pipe
	// closes on its exec (or its death).
	msg, rerr := io.ReadAll(io.LimitReader(statR, 64<<10))
	err = cmd.Wait()

	name := "sandbox init"
	if !cfg.Probe {
		name = cfg.Path
	}
	switch {
	case len(msg) > 0:
		return fmt.Errorf("%w: %s", ErrSetup, bytes.TrimSpace(msg))
	case ctx.Err() != nil && err != nil:
		return fmt.Errorf("isolate: %s killed: %w: %w", name, ctx.Err(), err)
	case werr != nil && err == nil:
		return fmt.Errorf("%w: sending the config: %w", ErrSetup, werr)
	case rerr != nil && err == nil:
		return fmt.Errorf("%w: reading the setup status: %w", ErrSetup, rerr)
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == exitSetup && cfg.Probe {
			return fmt.Errorf("%w: init exited %d without saying why", ErrSetup, exitSetup)
		}
		return fmt.Errorf("isolate: %s: %w", name, err)
	}
	return nil
}

// sysProcAttr is how Run starts the sandbox's init: in new namespaces
// (with a user namespace if userNS), in a session of its own, killed if
// this thread dies.
func sysProcAttr(userNS bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
			unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP,
		Pdeathsig: syscall.SIGKILL,
		Setsid:    true,
	}
	if !userNS {
		return a
	}
	a.Cloneflags |= unix.CLONE_NEWUSER
	uid, gid := os.Geteuid(), os.Getegid()
	if uid == 0 {
		// Every id maps to itself: the child is root as far as files
		// and devices go, but its capabilities are those of the new
		// user namespace, and Init drops them.
		all := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1<<32 - 1}}
		a.UidMappings, a.GidMappings = all, all
		a.GidMappingsEnableSetgroups = true // so Init can clear root's groups
		return a
	}
	a.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
	a.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
	return a
}

// useUserNS says whether Run tries a user namespace: always, except for
// root where user namespaces are disabled (user.max_user_namespaces = 0).
// Root also does without one where creating it fails with EPERM (in a
// chroot).
func useUserNS() bool {
	if os.Geteuid() != 0 {
		return true
	}
	if noUserNS {
		return false
	}
	b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	return err != nil || strings.TrimSpace(string(b)) != "0"
}
