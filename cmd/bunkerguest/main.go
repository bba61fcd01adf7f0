// Command bunkerguest is bunkerbuild's tool inside the guest. It is built
// static (CGO_ENABLED=0) and installed in the default guest initramfs at
// /bin/bunkerguest, where u-root's init runs "bunkerguest uinit" before it
// starts the shell.
//
// Usage:
//
//	bunkerguest info      print facts about the guest as key=value lines
//	bunkerguest uinit     give up the controlling terminal, then print info
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

	"golang.org/x/sys/unix"
)

const usage = "usage: bunkerguest info|uinit|poweroff|reboot|probe [--json] [--msr-module FILE]"

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
	if len(args) != 1 {
		return errUsage
	}
	switch args[0] {
	case "info":
		return printInfo(stdout)
	case "uinit":
		return uinit(stdout)
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
	return printInfo(stdout)
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
