package isolate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Init enters the sandbox if this process is a sandbox's init started by
// Run, and otherwise returns at once. Call it first thing in main, before
// anything else runs: in a sandbox's init it never returns, but sets up
// the mounts, limits and credentials and execs Spec.Args (or exits 125 and
// reports why to Run).
func Init() {
	initCalled.Store(true)
	v, ok := os.LookupEnv(envInit)
	if !ok {
		return
	}
	// Capabilities, no_new_privs and the parent-death signal belong to
	// a thread: set them on the one that calls execve.
	runtime.LockOSThread()
	cfgFD, statFD, ok := parseFDs(v)
	if !ok {
		fmt.Fprintf(os.Stderr, "isolate: %s=%q was not set by isolate.Run\n", envInit, v)
		os.Exit(exitSetup)
	}
	err := enter(cfgFD, statFD)
	if err == nil { // a probe (Available) that got all the way
		os.Exit(0)
	}
	if _, werr := unix.Write(statFD, []byte(err.Error())); werr != nil {
		fmt.Fprintf(os.Stderr, "isolate: %v\n", err)
	}
	os.Exit(exitSetup)
}

// parseFDs parses envInit's value: "CONFIG,STATUS".
func parseFDs(v string) (cfg, status int, ok bool) {
	a, b, ok := strings.Cut(v, ",")
	if !ok {
		return 0, 0, false
	}
	cfg, err1 := strconv.Atoi(a)
	status, err2 := strconv.Atoi(b)
	return cfg, status, err1 == nil && err2 == nil && cfg > 2 && status > 2
}

// enter builds the sandbox from the config on cfgFD and execs the program.
// It returns only on error, or with nil after a probe.
func enter(cfgFD, statFD int) error {
	f := os.NewFile(uintptr(cfgFD), "isolate-config")
	var cfg config
	err := json.NewDecoder(f).Decode(&cfg)
	f.Close()
	if err != nil {
		return fmt.Errorf("reading the config: %w", err)
	}
	// Refuse to touch mounts anywhere but in a fresh namespace.
	if pid := os.Getpid(); pid != 1 {
		return fmt.Errorf("init is PID %d, not 1 of a new PID namespace", pid)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &st); err != nil {
		return fmt.Errorf("reading the mount namespace: %w", err)
	}
	if st.Ino == cfg.ParentMountNS {
		return errors.New("init is still in its parent's mount namespace")
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}

	// Clone every host path to bind while the host tree is still here;
	// the clones are detached mounts, already read-only and so on.
	trees := make([]int, len(cfg.Mounts))
	for i, m := range cfg.Mounts {
		fd, err := cloneTree(m)
		if err != nil {
			return err
		}
		trees[i] = fd
	}

	if err := newRoot(cfg.Limits); err != nil {
		return err
	}
	for i, m := range cfg.Mounts {
		if err := mountpoint(m.Target, m.Dir); err != nil {
			return fmt.Errorf("%s %s: making its mount point: %w", m.Kind, m.Target, err)
		}
		if err := unix.MoveMount(trees[i], "", unix.AT_FDCWD, m.Target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("%s %s: attaching: %w", m.Kind, m.Target, err)
		}
		unix.Close(trees[i])
	}
	for _, p := range []string{"/dev", "/"} {
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(unix.AT_FDCWD, p, 0, &attr); err != nil {
			return fmt.Errorf("making %s read-only: %w", p, err)
		}
	}
	if err := unix.Sethostname([]byte(Hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := unix.Setdomainname(nil); err != nil {
		return fmt.Errorf("setdomainname: %w", err)
	}
	if err := os.Chdir(cfg.Dir); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if err := setLimits(cfg.Limits); err != nil {
		return err
	}
	if err := dropPrivileges(); err != nil {
		return err
	}
	if err := parentAlive(statFD); err != nil {
		return err
	}
	if cfg.Probe {
		return nil
	}
	unix.CloseOnExec(statFD)
	err = syscall.Exec(cfg.Path, cfg.Args, cfg.Env)
	return fmt.Errorf("exec %s: %w", cfg.Path, err)
}

// cloneTree returns a detached copy of m's host tree (open_tree), with
// m's mount attributes set on it and all its submounts.
func cloneTree(m mountSpec) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, m.Source,
		unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return -1, fmt.Errorf("%s %s: open_tree: %w", m.Kind, m.Source, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s %s: %w", m.Kind, m.Source, err)
	}
	typ := st.Mode & unix.S_IFMT
	switch {
	case m.Dir != (typ == unix.S_IFDIR):
		err = errors.New("changed type since Run looked at it")
	case m.Kind == kindDevice && typ != unix.S_IFCHR && typ != unix.S_IFBLK:
		err = errors.New("is not a device node")
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s %s: %w", m.Kind, m.Source, err)
	}
	attr := unix.MountAttr{Attr_set: mountAttrs[m.Kind]}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s %s: mount_setattr: %w", m.Kind, m.Source, err)
	}
	return fd, nil
}

// mountAttrs are the mount attributes of each kind of bind.
var mountAttrs = map[mountKind]uint64{
	kindInput:  unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC,
	kindExec:   unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
	kindOutput: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC,
	kindDevice: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NOEXEC,
}

// newRoot makes an empty tmpfs the root, with /proc, /dev and /tmp, and
// detaches the host's tree.
func newRoot(lim Limits) error {
	// Stage the new root over an existing directory of the (private)
	// host tree; what it hides there no longer matters.
	stage := ""
	for _, d := range []string{"/tmp", "/mnt", "/run", "/var/tmp", "/dev"} {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			stage = d
			break
		}
	}
	if stage == "" {
		return errors.New("no directory to stage the new root on")
	}
	if err := unix.Mount("tmpfs", stage, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m,nr_inodes=4096"); err != nil {
		return fmt.Errorf("mounting the root tmpfs: %w", err)
	}
	// A new procfs of this PID namespace, showing processes only. In a
	// user namespace, mounting it needs the host's /proc still visible.
	proc := stage + "/proc"
	if err := os.Mkdir(proc, 0o555); err != nil {
		return fmt.Errorf("mkdir /proc: %w", err)
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, "subset=pid"); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	old := stage + "/.oldroot"
	if err := os.Mkdir(old, 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", old, err)
	}
	if err := unix.PivotRoot(stage, old); err != nil {
		return fmt.Errorf("pivot_root %s: %w", stage, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's tree: %w", err)
	}
	if err := os.Remove("/.oldroot"); err != nil {
		return fmt.Errorf("removing /.oldroot: %w", err)
	}

	if err := os.Mkdir("/dev", 0o755); err != nil {
		return fmt.Errorf("mkdir /dev: %w", err)
	}
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k,nr_inodes=1024"); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	for name, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, "/dev/"+name); err != nil {
			return fmt.Errorf("/dev/%s: %w", name, err)
		}
	}
	if err := os.Mkdir("/tmp", 0o1777); err != nil {
		return fmt.Errorf("mkdir /tmp: %w", err)
	}
	size := lim.TmpSize
	if size == 0 {
		size = DefaultTmpSize
	}
	if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, fmt.Sprintf("mode=1777,size=%d", size)); err != nil {
		return fmt.Errorf("mounting /tmp: %w", err)
	}
	return nil
}

// mountpoint makes an empty directory or file at p to bind on, with its
// parents, unless p exists (as it does under an input directory).
func mountpoint(p string, dir bool) error {
	if _, err := os.Lstat(p); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if dir {
		return os.Mkdir(p, 0o755)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		return err
	}
	return f.Close()
}

// setLimits sets RLIMIT_CORE to 0 and the limits in lim, soft and hard.
func setLimits(lim Limits) error {
	cpu := uint64(0)
	if lim.CPUTime > 0 {
		cpu = uint64((lim.CPUTime + 999_999_999) / 1_000_000_000)
	}
	for _, l := range []struct {
		name     string
		resource int
		value    uint64
		set      bool
	}{
		{"RLIMIT_CORE", unix.RLIMIT_CORE, 0, true},
		{"RLIMIT_AS", unix.RLIMIT_AS, lim.AddressSpace, lim.AddressSpace > 0},
		{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, lim.OpenFiles, lim.OpenFiles > 0},
		{"RLIMIT_NPROC", unix.RLIMIT_NPROC, lim.Processes, lim.Processes > 0},
		{"RLIMIT_CPU", unix.RLIMIT_CPU, cpu, cpu > 0},
		{"RLIMIT_FSIZE", unix.RLIMIT_FSIZE, lim.FileSize, lim.FileSize > 0},
	} {
		if !l.set {
			continue
		}
		// unix.Setrlimit goes through syscall.Setrlimit, which also
		// stops syscall.Exec from restoring the soft RLIMIT_NOFILE Go
		// raised at start-up.
		if err := unix.Setrlimit(l.resource, &unix.Rlimit{Cur: l.value, Max: l.value}); err != nil {
			var old unix.Rlimit
			if unix.Getrlimit(l.resource, &old) == nil && l.value > old.Max {
				return fmt.Errorf("setting %s to %d: above the caller's hard limit %d: %w", l.name, l.value, old.Max, err)
			}
			return fmt.Errorf("setting %s to %d: %w", l.name, l.value, err)
		}
	}
	return nil
}

// Secure bits (linux/securebits.h): uid 0 gets no capabilities from
// execve or setuid, capabilities are not kept across setuid, ambient
// capabilities cannot be raised; all locked.
const (
	secbitNoroot                  = 1 << 0
	secbitNorootLocked            = 1 << 1
	secbitNoSetuidFixupLocked     = 1 << 3
	secbitKeepCapsLocked          = 1 << 5
	secbitNoCapAmbientRaise       = 1 << 6
	secbitNoCapAmbientRaiseLocked = 1 << 7
	securebits                    = secbitNoroot | secbitNorootLocked | secbitNoSetuidFixupLocked |
		secbitKeepCapsLocked | secbitNoCapAmbientRaise | secbitNoCapAmbientRaiseLocked
)

// dropPrivileges leaves this thread, and what it execs, no capabilities,
// no way to gain any, no supplementary groups where that is allowed, and
// no_new_privs. It must run on the thread that calls execve.
func dropPrivileges() error {
	// The caller's supplementary groups: clearing them needs
	// CAP_SETGID over them, which a non-root caller's user namespace
	// does not give (setgroups is denied there); then they stay, and
	// the child keeps the caller's group access (such as group kvm).
	if err := unix.Setgroups(nil); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, securebits, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_SECUREBITS: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	for c := 0; ; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) && c > 0 { // past the last capability
			break
		}
		if err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	// Go set the parent-death signal before exec'ing this init; set it
	// again, as credentials changes can clear it.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_PDEATHSIG: %w", err)
	}
	return nil
}

// parentAlive fails if Run's process is gone: it holds the status pipe's
// read end until this init execs, and a pipe with no reader polls POLLERR.
// (In a new PID namespace getppid is 0, so the parent cannot be checked by
// PID; Go's own check after PR_SET_PDEATHSIG does not work there.)
func parentAlive(statFD int) error {
	fds := []unix.PollFd{{Fd: int32(statFD), Events: 0}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		return fmt.Errorf("poll on the status pipe: %w", err)
	}
	if n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
		os.Exit(exitSetup) // no one to tell
	}
	return nil
}
