package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/term"
	"github.com/bunkerbuild/bunkerbuild/internal/units"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/serial"
	vnet "github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/net"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// DefaultCmdline suits the stock Debian kernel on the full profile.
// DefaultCmdline is the kernel command line run and demo boot with.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 i8042.noaux"

// VMFlags are the flags that describe a machine to boot.
func VMFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "mem", Value: "512M", Usage: "guest RAM, e.g. 512M or 2G"},
		&cli.IntFlag{Name: "cpus", Value: 2, Usage: "number of vCPUs"},
		&cli.StringFlag{Name: "profile", Value: "full", Usage: "device profile: full (boot-time) or minimal (production)"},
		&cli.StringFlag{Name: "policy", Value: "deny", Usage: "accesses outside the profile: deny (count, read ones) or kill (stop the VM)"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log denied accesses and VMM events to stderr"},
		&cli.BoolFlag{Name: "serial", Usage: "add the COM1 console to a profile without it (minimal), shown as an addition in reports"},
		&cli.BoolFlag{Name: "report", Usage: "print the guest's use of each inventory entry, and the denied addresses, to stderr at exit"},
		&cli.BoolFlag{Name: "record-msrs", Usage: "send every MSR access through the VMM and count it (slow; to learn which MSRs a guest uses)"},
	}
}

// Run returns the run command, which boots a kernel on a profile with the console on the terminal.
func Run() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "boot a Linux kernel, or a disk through a BIOS, in the foreground, its serial console on this terminal (Ctrl-A x quits)",
		ArgsUsage: " ",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "kernel", Usage: "bzImage to boot"},
			&cli.StringFlag{Name: "firmware", Usage: "instead of a kernel, boot this BIOS image (Debian's SeaBIOS is /usr/share/seabios/bios-256k.bin), which boots the first --disk; the profile is then full+firmware"},
			&cli.StringFlag{Name: "initrd", Usage: "initramfs to load"},
			&cli.StringFlag{Name: "cmdline", Value: DefaultCmdline, Usage: "kernel command line"},
			&cli.StringSliceFlag{Name: "disk", Usage: "PATH[:ro]: a raw disk image as the next virtio-blk disk, its ID disk0, disk1, ... (repeatable; :ro offers it read-only)"},
			&cli.StringFlag{Name: "tap", Usage: "add a virtio-net NIC on this tap device (it must exist, in this network namespace)"},
		}, VMFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return UsageError("run takes no arguments, got %q", c.Args().Slice())
			}
			if (c.String("kernel") == "") == (c.String("firmware") == "") {
				return UsageError("give --kernel or --firmware")
			}
			cfg, err := MachineConfig(c, c.String("kernel"), c.String("initrd"), c.String("cmdline"))
			if err != nil {
				return err
			}
			if fw := c.String("firmware"); fw != "" {
				if c.IsSet("initrd") {
					return UsageError("--initrd: a firmware boot loads what the disk's boot loader loads")
				}
				if cfg.Firmware, err = machine.ReadFirmware(fw); err != nil {
					return UsageError("--firmware: %v", err)
				}
				if !c.IsSet("profile") {
					cfg.Profile = inventory.FullFirmware
				}
			}
			for i, d := range c.StringSlice("disk") {
				path, ro := strings.CutSuffix(d, ":ro")
				flag := os.O_RDWR
				if ro {
					flag = os.O_RDONLY
				}
				f, err := os.OpenFile(path, flag, 0)
				if err != nil {
					return UsageError("--disk: %v", err)
				}
				defer f.Close()
				cfg.Disks = append(cfg.Disks, machine.Disk{File: f, ReadOnly: ro, ID: fmt.Sprintf("disk%d", i)})
			}
			if name := c.String("tap"); name != "" {
				tap, err := vnet.OpenTap(name)
				if err != nil {
					return UsageError("--tap: %v", err)
				}
				defer tap.Close()
				cfg.NIC = &machine.NIC{Link: tap}
			}
			return RunInteractive(c.Context, cfg, c.Bool("report"))
		},
	}
}

// MachineConfig reads the VM flags and the guest's files.
func MachineConfig(c *cli.Context, kernel, initrd, cmdline string) (machine.Config, error) {
	var cfg machine.Config
	mem, err := units.ParseSize(c.String("mem"))
	if err != nil {
		return cfg, UsageError("--mem: %v", err)
	}
	prof, err := inventory.ParseProfile(c.String("profile"))
	if err != nil {
		return cfg, UsageError("--profile: %v", err)
	}
	if cfg, err = vmConfigFlags(c); err != nil {
		return cfg, err
	}
	cfg.Profile, cfg.Memory, cfg.CPUs, cfg.Cmdline = prof, mem, c.Int("cpus"), cmdline
	cfg.RecordMSRs, cfg.SerialConsole = c.Bool("record-msrs"), c.Bool("serial")
	// The files are read straight into guest memory when the machine is
	// created; the process exits soon after, which closes them.
	if kernel == "" {
		return cfg, nil
	}
	if cfg.Kernel, err = openImage(kernel); err != nil {
		return cfg, UsageError("kernel: %v", err)
	}
	if initrd != "" {
		if cfg.Initrd, err = openImage(initrd); err != nil {
			return cfg, UsageError("initrd: %v", err)
		}
	}
	return cfg, nil
}

// vmConfigFlags reads the policy and logging flags.
func vmConfigFlags(c *cli.Context) (machine.Config, error) {
	pol, err := bus.ParsePolicy(c.String("policy"))
	if err != nil {
		return machine.Config{}, UsageError("--policy: %v", err)
	}
	logOut := io.Discard
	if c.Bool("verbose") {
		logOut = os.Stderr
	}
	return machine.Config{Policy: pol, Log: log.New(logOut, "bunkerbuild: ", log.Ltime|log.Lmicroseconds)}, nil
}

// openImage opens a guest file for machine.Config.
func openImage(path string) (machine.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return io.NewSectionReader(f, 0, st.Size()), nil
}

// RunInteractive boots cfg with the console on this process's terminal and
// maps how the guest ended to the exit status.
func RunInteractive(ctx context.Context, cfg machine.Config, report bool) error {
	return runInteractiveWith(ctx, cfg, machine.New, report)
}

// runInteractiveWith is RunInteractive with the machine made by create
// (machine.New, or a restore).
func runInteractiveWith(ctx context.Context, cfg machine.Config, create func(machine.Config) (*machine.Machine, error), report bool) error {
	return runConsole(ctx, cfg, create, report, cli.Exit("guest rebooted", ExitReboot))
}

// runConsole runs the machine create makes with the console on this
// terminal; onReboot is returned when the guest reboots.
func runConsole(ctx context.Context, cfg machine.Config, create func(machine.Config) (*machine.Machine, error), report bool, onReboot error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	quit := make(chan struct{}, 1)
	cfg.ConsoleIn = serial.NewEscape(os.Stdin, func() { quit <- struct{}{}; cancel() })
	cfg.ConsoleOut = os.Stdout
	if term.IsTerminal(int(os.Stdin.Fd())) {
		restore, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err != nil {
			return err
		}
		// The guest's tty already turns LF into CR LF.
		defer restore()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return boot(ctx, cfg, create, quit, report, onReboot)
}

func boot(ctx context.Context, cfg machine.Config, create func(machine.Config) (*machine.Machine, error), quit <-chan struct{}, report bool, onReboot error) error {
	m, err := create(cfg)
	if err != nil {
		if errors.Is(err, machine.ErrInvalid) {
			return cli.Exit(err.Error(), ExitUsage)
		}
		return err
	}
	defer m.Close()
	// Setting up the machine left garbage (CPUID and MSR tables, parsed
	// state); the run loop allocates little. Hand the memory back now, and
	// collect sooner than the default (whose 4 MiB minimum heap goal would
	// be most of the VMM's footprint), so that it stays small while the
	// guest runs.
	debug.FreeOSMemory()
	debug.SetGCPercent(20)
	start := time.Now()
	if report {
		defer WriteAccounting(os.Stderr, m.Buses(), start)
	}
	stopDumps := dumpOnSignal(m)
	defer stopDumps()
	how, err := m.Run(ctx)
	if err != nil {
		return err
	}
	switch how {
	case machine.ExitPoweroff:
		return nil
	case machine.ExitReboot:
		return onReboot
	}
	select {
	case <-quit:
		return cli.Exit("quit (Ctrl-A x)", ExitStopped)
	default:
		return cli.Exit("stopped", ExitStopped)
	}
}

// dumpOnSignal prints the vCPUs' state (machine.DebugState) to stderr
// each time the process gets SIGUSR1, for a guest that seems stuck: a
// benchmark or a person can ask before killing it. It returns a function
// that stops listening.
func dumpOnSignal(m *machine.Machine) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-sigs:
				fmt.Fprintf(os.Stderr, "bunkerbuild: SIGUSR1: the machine's state:\n%s", m.DebugState())
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(sigs); close(done) }
}
