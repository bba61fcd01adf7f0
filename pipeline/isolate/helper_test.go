package isolate

// The test binary is its own sandboxed program: TestMain calls Init, and
// with envChild set it runs one of the child modes below instead of the
// tests, so nothing but this binary is needed inside the sandbox.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// envChild selects a child mode of the test binary.
const envChild = "ISOLATE_TEST_CHILD"

// report is what the "report" mode sees inside the sandbox.
type report struct {
	Hostname   string
	PID, PPID  int
	UID, GID   int
	Groups     []int
	Interfaces []string // from /proc/self/net/dev
	LoopUp     bool
	ConnectErr string // connecting to 192.0.2.1:80
	Root, Dev  []string
	Procs      []string // numeric entries of /proc
	Status     map[string]string
	Rlimits    map[string][2]uint64
	Cwd        string
	// Checks maps each argument "OP:PATH" to "ok", or the error:
	// r reads, w opens for writing and writes, c creates a file in the
	// directory PATH, x stats.
	Checks map[string]string
}

// childMain runs child mode mode with args and returns the exit status.
func childMain(mode string, args []string) int {
	switch mode {
	case "report":
		return childReport(args)
	case "exit":
		n, _ := strconv.Atoi(args[0])
		return n
	case "sleeptree":
		// A grandchild, then a line on stdout, then sleep.
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		gc := exec.Command(exe, args...)
		gc.Env = []string{envChild + "=sleep"}
		gc.Stdout = os.Stdout
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		time.Sleep(time.Hour)
		return 0
	case "sleep":
		time.Sleep(time.Hour)
		return 0
	case "parent":
		// On the host: Run a sleeptree and never return.
		err := Run(context.Background(), Spec{
			Args:   append([]string{exePath()}, args...),
			Env:    []string{envChild + "=sleeptree"},
			Stdout: os.Stdout,
			Stderr: os.Stderr,
		})
		fmt.Fprintln(os.Stderr, "parent: Run returned:", err)
		return 1
	case "nofile":
		n := 0
		var err error
		for ; n < 1<<16; n++ {
			if _, err = unix.Open("/dev/null", unix.O_RDONLY, 0); err != nil {
				break
			}
		}
		fmt.Printf("%d %v\n", n, err)
		return 0
	case "available":
		if err := Available(); err != nil {
			fmt.Println(err)
			return 1
		}
		return 0
	case "kvm":
		fmt.Println(kvmProbe())
		return 0
	case "cat":
		b, err := os.ReadFile(args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Stdout.Write(b)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
	return 2
}

func childReport(args []string) int {
	r := report{
		PID: os.Getpid(), PPID: os.Getppid(), UID: os.Getuid(), GID: os.Getgid(),
		Status: map[string]string{}, Rlimits: map[string][2]uint64{}, Checks: map[string]string{},
	}
	r.Hostname, _ = os.Hostname()
	r.Groups, _ = os.Getgroups()
	r.Cwd, _ = os.Getwd()
	if b, err := os.ReadFile("/proc/self/net/dev"); err == nil {
		for _, line := range strings.Split(string(b), "\n")[2:] {
			if name, _, ok := strings.Cut(line, ":"); ok {
				r.Interfaces = append(r.Interfaces, strings.TrimSpace(name))
			}
		}
	}
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		if ifr, err := unix.NewIfreq("lo"); err == nil && unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr) == nil {
			r.LoopUp = ifr.Uint16()&unix.IFF_UP != 0
		}
		unix.Close(fd)
	}
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		err := unix.Connect(fd, &unix.SockaddrInet4{Port: 80, Addr: [4]byte{192, 0, 2, 1}})
		r.ConnectErr = fmt.Sprint(err)
		unix.Close(fd)
	}
	names := func(dir string) []string {
		es, _ := os.ReadDir(dir)
		var n []string
		for _, e := range es {
			n = append(n, e.Name())
		}
		return n
	}
	r.Root, r.Dev = names("/"), names("/dev")
	for _, n := range names("/proc") {
		if _, err := strconv.Atoi(n); err == nil {
			r.Procs = append(r.Procs, n)
		}
	}
	if f, err := os.Open("/proc/self/status"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			k, v, _ := strings.Cut(s.Text(), ":")
			if strings.HasPrefix(k, "Cap") || k == "NoNewPrivs" || k == "Seccomp" {
				r.Status[k] = strings.TrimSpace(v)
			}
		}
		f.Close()
	}
	for name, res := range rlimitNames {
		var l unix.Rlimit
		if unix.Getrlimit(res, &l) == nil {
			r.Rlimits[name] = [2]uint64{l.Cur, l.Max}
		}
	}
	for _, a := range args {
		op, p, _ := strings.Cut(a, ":")
		var err error
		switch op {
		case "r": // at most 64 KiB: /dev/urandom has no end
			var f *os.File
			if f, err = os.Open(p); err == nil {
				_, err = io.Copy(io.Discard, io.LimitReader(f, 64<<10))
				f.Close()
			}
		case "w":
			var f *os.File
			if f, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0); err == nil {
				_, err = f.WriteString("x")
				f.Close()
			}
		case "c":
			err = os.WriteFile(p+"/created-inside", []byte("from the sandbox"), 0o644)
		case "x":
			_, err = os.Lstat(p)
		default:
			err = fmt.Errorf("unknown op %q", op)
		}
		r.Checks[a] = "ok"
		if err != nil {
			r.Checks[a] = errText(err)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

var rlimitNames = map[string]int{
	"AS": unix.RLIMIT_AS, "NOFILE": unix.RLIMIT_NOFILE, "NPROC": unix.RLIMIT_NPROC,
	"CPU": unix.RLIMIT_CPU, "FSIZE": unix.RLIMIT_FSIZE, "CORE": unix.RLIMIT_CORE,
}

// errText is the errno text of err, without the path.
func errText(err error) string {
	var errno syscall.Errno
	if pe, ok := err.(*os.PathError); ok {
		err = pe.Err
	}
	if e, ok := err.(syscall.Errno); ok {
		errno = e
		return errno.Error()
	}
	return err.Error()
}

// KVM ioctls (linux/kvm.h).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
)

// kvmProbe opens /dev/kvm and returns "api=V vm=ok|ERR", or the open
// error.
func kvmProbe() string {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "open: " + err.Error()
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 {
		return "KVM_GET_API_VERSION: " + errno.Error()
	}
	vm := "ok"
	vmfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		vm = errno.Error()
	} else {
		unix.Close(int(vmfd))
	}
	return fmt.Sprintf("api=%d vm=%s", v, vm)
}

// exePath is this test binary.
func exePath() string {
	p, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return p
}

// sortedCopy returns s sorted.
func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
