//go:build linux && amd64

// Command l1init is PID 1 of the lab's L1 VM (see package lab).
//
// It mounts the basic file systems, loads the kernel modules listed in
// labproto.ModulesPath, checks that /dev/kvm works, mounts the host's root
// over 9p at labproto.HostRoot with L1's own /proc, /sys and /dev on top,
// chroots there, runs the command of labproto.RequestPath with its output on
// the stdout and stderr virtio ports, reports the outcome on the status port
// and powers L1 off.
//
// It uses the standard library only: package lab builds it from its embedded
// sources, outside this module, with CGO_ENABLED=0.
package main

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/bunkerbuild/bunkerbuild/internal/lab/labproto"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("l1init: ")
	var l l1
	st := l.run()
	l.report(st)
	syscall.Sync()
	// On failure main returns, the kernel panics, and QEMU (-no-reboot,
	// panic=-1) exits anyway.
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		log.Printf("power off: %v", err)
	}
}

// l1 holds the virtio ports that lead to the host.
type l1 struct {
	stdout, stderr, status *os.File
}

func failf(format string, args ...any) labproto.Status {
	return labproto.Status{Kind: labproto.Fail, Detail: fmt.Sprintf(format, args...)}
}

// run sets L1 up and runs the requested command.
func (l *l1) run() labproto.Status {
	start := time.Now()
	if err := mountAll(baseMounts, ""); err != nil {
		return failf("%v", err)
	}
	if err := loadModules(labproto.ModulesPath); err != nil {
		return failf("%v", err)
	}
	if err := l.openPorts(10 * time.Second); err != nil {
		return failf("%v", err)
	}
	kvm, err := checkKVM()
	if err != nil {
		return failf("%v", err)
	}
	if err := mountHost(); err != nil {
		return failf("%v", err)
	}
	if err := loopbackUp(); err != nil {
		return failf("%v", err)
	}
	req, err := readRequest(labproto.RequestPath)
	if err != nil {
		return failf("%v", err)
	}
	l.report(labproto.Status{Kind: labproto.Ready, Detail: fmt.Sprintf("%s; kernel %s; init took %v",
		kvm, kernelRelease(), time.Since(start).Round(time.Millisecond))})
	return l.runCommand(req)
}

// report writes st to the status port, or to the console if there is none.
func (l *l1) report(st labproto.Status) {
	line := st.Format()
	if st.Kind == labproto.Fail || l.status == nil {
		log.Print(line)
	}
	if l.status == nil {
		return
	}
	// A blocking write to a virtio port returns once the host has taken
	// the data, so nothing is lost when L1 powers off right after.
	if _, err := l.status.WriteString(line); err != nil {
		log.Printf("report %q: %v", line, err)
	}
}

type mount struct {
	source, target, fstype, data string
	flags                        uintptr
}

// baseMounts are what init itself needs.
var baseMounts = []mount{
	{"proc", "/proc", "proc", "", syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
	{"sysfs", "/sys", "sysfs", "", syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
	{"devtmpfs", "/dev", "devtmpfs", "mode=0755", syscall.MS_NOSUID},
}

// commandMounts go over the host tree, after baseMounts, for the command.
var commandMounts = []mount{
	{"devpts", "/dev/pts", "devpts", "ptmxmode=0666", syscall.MS_NOSUID | syscall.MS_NOEXEC},
	{"tmpfs", labproto.TmpDir, "tmpfs", "mode=1777", syscall.MS_NOSUID | syscall.MS_NODEV},
}

// mountAll mounts ms in order, each target under root.
func mountAll(ms []mount, root string) error {
	for _, m := range ms {
		target := root + m.target
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", target, err)
		}
		if err := syscall.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
		}
	}
	return nil
}

// mountHost mounts the host's root at HostRoot and L1's file systems over
// its /proc, /sys and /dev.
func mountHost() error {
	host := mount{labproto.MountTag, "", "9p", "trans=virtio,version=9p2000.L,msize=524288,cache=mmap", 0}
	if err := mountAll([]mount{host}, labproto.HostRoot); err != nil {
		return err
	}
	if err := mountAll(baseMounts, labproto.HostRoot); err != nil {
		return err
	}
	return mountAll(commandMounts, labproto.HostRoot)
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// loadModules loads the modules listed in the file list, skipping those
// whose CPU flag L1's CPU lacks.
func loadModules(list string) error {
	b, err := os.ReadFile(list)
	if err != nil {
		return fmt.Errorf("read module list: %w", err)
	}
	flags, err := cpuFlags()
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(b)) {
		if strings.TrimSpace(line) == "" {
			continue
		}
		path, cpuFlag, err := labproto.ParseModuleLine(line)
		if err != nil {
			return err
		}
		if cpuFlag != "" && !flags[cpuFlag] {
			continue
		}
		if err := loadModule(path); err != nil {
			return err
		}
	}
	return nil
}

// cpuFlags returns the flags of the first CPU in /proc/cpuinfo.
func cpuFlags() (map[string]bool, error) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return nil, fmt.Errorf("read CPU flags: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "flags" {
			flags := make(map[string]bool)
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
			return flags, nil
		}
	}
	return nil, errors.New("read CPU flags: no flags line in /proc/cpuinfo")
}

// sysFinitModule is finit_module(2) on amd64; package syscall lacks it.
const sysFinitModule = 313

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	params, err := syscall.BytePtrFromString("")
	if err != nil {
		return err
	}
	_, _, errno := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(params)), 0)
	if errno != 0 && errno != syscall.EEXIST {
		return fmt.Errorf("load module %s: %w", path, errno)
	}
	return nil
}

// openPorts opens the virtio serial ports by name, waiting up to timeout for
// the host to announce them.
func (l *l1) openPorts(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		devs, err := virtioPorts()
		if err != nil {
			return err
		}
		out, errOut, status := devs[labproto.PortStdout], devs[labproto.PortStderr], devs[labproto.PortStatus]
		if out != "" && errOut != "" && status != "" {
			if l.stdout, err = os.OpenFile(out, os.O_WRONLY, 0); err != nil {
				return fmt.Errorf("open stdout port: %w", err)
			}
			if l.stderr, err = os.OpenFile(errOut, os.O_WRONLY, 0); err != nil {
				return fmt.Errorf("open stderr port: %w", err)
			}
			if l.status, err = os.OpenFile(status, os.O_WRONLY, 0); err != nil {
				return fmt.Errorf("open status port: %w", err)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("virtio ports %s, %s, %s: not all present after %v (found %v)",
				labproto.PortStdout, labproto.PortStderr, labproto.PortStatus, timeout, devs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// virtioPorts maps the names of the virtio serial ports to their devices.
func virtioPorts() (map[string]string, error) {
	const class = "/sys/class/virtio-ports"
	entries, err := os.ReadDir(class)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list virtio ports: %w", err)
	}
	devs := make(map[string]string)
	for _, e := range entries {
		name, err := os.ReadFile(filepath.Join(class, e.Name(), "name"))
		if err != nil {
			continue // not named yet
		}
		devs[strings.TrimSpace(string(name))] = "/dev/" + e.Name()
	}
	return devs, nil
}

// Requests on /dev/kvm.
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
)

// checkKVM opens /dev/kvm and creates a VM, and describes the result.
func checkKVM() (string, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("check kvm: %w (vendor module: %s)", err, kvmModule())
	}
	defer f.Close()
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return "", fmt.Errorf("check kvm: KVM_GET_API_VERSION: %w", errno)
	}
	vm, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return "", fmt.Errorf("check kvm: KVM_CREATE_VM: %w", errno)
	}
	syscall.Close(int(vm))
	return fmt.Sprintf("/dev/kvm ok (api %d, %s)", v, kvmModule()), nil
}

// kvmModule names the KVM vendor module that is loaded.
func kvmModule() string {
	for _, m := range []string{"kvm_amd", "kvm_intel"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			return m
		}
	}
	return "none loaded; L1's CPU has neither svm nor vmx"
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// loopbackUp brings lo up; the kernel then gives it 127.0.0.1.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer syscall.Close(fd)
	var ifr ifreqFlags
	copy(ifr.name[:], "lo")
	if err := ioctl(fd, syscall.SIOCGIFFLAGS, unsafe.Pointer(&ifr)); err != nil {
		return fmt.Errorf("loopback: get flags: %w", err)
	}
	ifr.flags |= syscall.IFF_UP
	if err := ioctl(fd, syscall.SIOCSIFFLAGS, unsafe.Pointer(&ifr)); err != nil {
		return fmt.Errorf("loopback: set flags: %w", err)
	}
	return nil
}

// ifreqFlags is struct ifreq with its ifr_flags member.
type ifreqFlags struct {
	name  [syscall.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

func readRequest(path string) (labproto.Request, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return labproto.Request{}, fmt.Errorf("read request: %w", err)
	}
	return labproto.DecodeRequest(b)
}

// runCommand chroots into the host tree and runs req there.
func (l *l1) runCommand(req labproto.Request) labproto.Status {
	if err := syscall.Chroot(labproto.HostRoot); err != nil {
		return failf("chroot %s: %v", labproto.HostRoot, err)
	}
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	if err := os.Chdir(dir); err != nil {
		return failf("%v", err)
	}
	env := labproto.CommandEnv(req.Env)
	path, ok := labproto.LookupEnv(env, "PATH")
	if !ok {
		path = labproto.DefaultPath
	}
	// exec.LookPath searches this process's PATH.
	os.Setenv("PATH", path)
	cmd := exec.Command(req.Args[0], req.Args[1:]...)
	if cmd.Err != nil {
		return failf("start %s: %v", req.Args[0], cmd.Err)
	}
	cmd.Args = req.Args
	cmd.Env = env
	cmd.Stdout = l.stdout
	cmd.Stderr = l.stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return labproto.Status{Kind: labproto.Exit, Code: 0}
	case errors.As(err, &exitErr):
		ws := exitErr.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			return labproto.Status{Kind: labproto.Signal, Code: int(ws.Signal())}
		}
		return labproto.Status{Kind: labproto.Exit, Code: ws.ExitStatus()}
	default:
		return failf("start %s: %v", req.Args[0], err)
	}
}
