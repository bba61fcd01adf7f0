// Command bunkerguest is bunkerbuild's tool inside the guest. It is built
// static (CGO_ENABLED=0) and installed in the default guest initramfs at
// /bin/bunkerguest, where u-root's init runs "bunkerguest uinit" before it
// starts the shell.
//
// Usage:
//
//	bunkerguest info      print facts about the guest as key=value lines
//	bunkerguest uinit     give up the controlling terminal, start the counter
//	                      if the kernel command line has bunkerguest.count=FILE,
//	                      print info, then signal readiness
//	bunkerguest ready     tell the build the guest has booted: print the line
//	                      BUNKERGUEST-READY on the console (a recipe's
//	                      "booted: guest-signal: true" waits for it)
//	bunkerguest count FILE
//	                      count up ten times a second into FILE, for ever: a
//	                      process whose progress shows across a snapshot
//	bunkerguest poweroff  sync and power the machine off
//	bunkerguest reboot    sync and restart the machine
//	bunkerguest probe [--json] [--msr-module FILE]
//	                      scan the I/O ports, MSRs and hypervisor CPUID
//	                      leaves the guest can reach (see probe.go); --json
//	                      prints one line, "BUNKERGUEST-PROBE {...}"
package main

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
)

const usage = "usage: bunkerguest info|uinit|ready|poweroff|reboot|count FILE|io FILE|io-check FILE|disk-bench DEV SECONDS|net-send HOST:PORT SECONDS|probe [--json] [--msr-module FILE]"

var errUsage = errors.New(usage)

func main() {
	log.SetFlags(0)
	log.SetPrefix("bunkerguest: ")
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		log.Fatal(err)
	}
}

func run(args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "probe" {
		return probe(args[1:], stdout)
	}
	if len(args) == 2 {
		switch args[0] {
		case "count":
			return count(args[1])
		case "io":
			return ioWriter(args[1])
		case "io-check":
			return ioCheck(args[1], stdout)
		}
	}
	if len(args) == 3 && (args[0] == "disk-bench" || args[0] == "net-send") {
		secs, err := seconds(args[2])
		if err != nil {
			return err
		}
		if args[0] == "disk-bench" {
			return diskBench(args[1], secs, stdout)
		}
		return netSend(args[1], secs, stdout)
	}
	if len(args) != 1 {
		return errUsage
	}
	switch args[0] {
	case "info":
		return printInfo(stdout)
	case "uinit":
		return uinit(stdout)
	case "ready":
		return ready()
	case "poweroff":
		return shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF)
	case "reboot":
		return shutdown(unix.LINUX_REBOOT_CMD_RESTART)
	default:
		return errUsage
	}
}

// uinit prints the guest's facts when u-root's init runs it before the
// shell. init starts it as a session leader with the console as its
// controlling terminal; were it to exit as such, the kernel would hang the
// console up, and with it the writers init has already opened for the
// shell's output. So it first gives the terminal up, ignoring the SIGHUP that
// this sends to its own process group.
func uinit(stdout io.Writer) error {
	signal.Ignore(unix.SIGHUP)
	err := unix.IoctlSetInt(int(os.Stdin.Fd()), unix.TIOCNOTTY, 0)
	if err != nil && !errors.Is(err, unix.ENOTTY) {
		return fmt.Errorf("release controlling terminal: %w", err)
	}
	loadDeviceModules()
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		// Mounts first: the counter and the disk writer may write there.
		fields := strings.Fields(string(b))
		for _, f := range fields {
			if spec, ok := strings.CutPrefix(f, guestproto.MountParam+"="); ok {
				if err := mountSpec(spec); err != nil {
					log.Print(err)
				}
			}
		}
		for _, f := range fields {
			if file, ok := strings.CutPrefix(f, guestproto.CountParam+"="); ok {
				if err := startHelper("count", file); err != nil {
					log.Print(err)
				}
			}
			if file, ok := strings.CutPrefix(f, guestproto.IOParam+"="); ok {
				if err := startHelper("io", file); err != nil {
					log.Print(err)
				}
			}
		}
	}
	if err := printInfo(stdout); err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, guestproto.ReadyLine)
	return err
}

// loadDeviceModules loads the drivers of the required devices the image
// carries; a missing module is skipped (a custom image may build them in)
// and a failing one is logged.
func loadDeviceModules() {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		log.Print(err)
		return
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]))
	for _, m := range guestproto.DeviceModules {
		p := filepath.Join(dir, path.Base(m))
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := loadModule(p); err != nil {
			log.Print(err)
		}
	}
}

// ready prints guestproto.ReadyLine on the console.
func ready() error {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, guestproto.ReadyLine)
	return err
}

// startHelper starts "bunkerguest CMD FILE" in its own session, with no
// terminal, so that it outlives init's console handoff.
func startHelper(cmd, file string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	p, err := os.StartProcess(self, []string{self, cmd, file}, &os.ProcAttr{
		Files: []*os.File{nil, nil, nil},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", cmd, err)
	}
	return p.Release()
}

// count writes 1, 2, 3... into file, ten a second, each by writing a new
// file and renaming it over the old one so readers never see a partial
// number.
func count(file string) error {
	tmp := file + ".tmp"
	for n := 1; ; n++ {
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(n)+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, file); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shutdown flushes the file systems and then powers off or restarts the
// machine, depending on cmd. It returns only on failure.
func shutdown(cmd int) error {
	unix.Sync()
	if err := unix.Reboot(cmd); err != nil {
		return fmt.Errorf("reboot(%#x): %w", cmd, err)
	}
	return nil
}
