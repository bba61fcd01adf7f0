package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// defaultGuest returns the default guest's kernel and initramfs, building
// or fetching them into the cache when their inputs changed.
func defaultGuest(ctx context.Context, cache string) (kernel, initrd string, err error) {
	if kernel, err = guestimage.Kernel(ctx, cache, os.Stderr); err != nil {
		return "", "", err
	}
	if initrd, err = guestimage.Initramfs(ctx, cache, os.Stderr); err != nil {
		return "", "", err
	}
	return kernel, initrd, nil
}

func cacheFlag() cli.Flag {
	return &cli.StringFlag{Name: "cache", Value: guestimage.DefaultCacheDir(), Usage: "where the default guest's kernel and initramfs are cached"}
}

func guestCommand() *cli.Command {
	return &cli.Command{
		Name:  "guest",
		Usage: "fetch the stock Debian kernel and build the u-root initramfs of the default guest; print their paths",
		Flags: []cli.Flag{cacheFlag()},
		Action: func(c *cli.Context) error {
			k, i, err := defaultGuest(c.Context, c.String("cache"))
			if err != nil {
				return err
			}
			fmt.Printf("kernel=%s\ninitrd=%s\n", k, i)
			return nil
		},
	}
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "boot the default guest, run a command in it over the serial console, and power it off",
		Flags: append([]cli.Flag{
			cacheFlag(),
			&cli.StringFlag{Name: "kernel", Usage: "boot this bzImage instead of the default guest's kernel"},
			&cli.StringFlag{Name: "initrd", Usage: "use this initramfs instead of the default guest's"},
			&cli.StringFlag{Name: "command", Value: "bunkerguest info", Usage: "shell command to run in the guest"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Minute, Usage: "give up after this long"},
		}, vmFlags()...),
		Action: demo,
	}
}

func demo(c *cli.Context) error {
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
	defer cancel()
	step := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
	}

	kernel, initrd := c.String("kernel"), c.String("initrd")
	if kernel == "" || initrd == "" {
		step("preparing the default guest (cached after the first run)")
		k, i, err := defaultGuest(ctx, c.String("cache"))
		if err != nil {
			return err
		}
		kernel, initrd = cmp.Or(kernel, k), cmp.Or(initrd, i)
	}
	cfg, err := machineConfig(c, kernel, initrd, defaultCmdline)
	if err != nil {
		return err
	}
	step("booting %s with %s RAM and %d vCPUs on the %s profile", kernel, c.String("mem"), cfg.CPUs, cfg.Profile)
	return scripted(ctx, cfg, machine.New, c.String("command"), c.Bool("report"), step, true)
}

// scripted starts the machine create makes from cfg, its console on
// stdout, runs command in the guest's shell, prints the output, and powers
// the guest off. A booting guest (waitBoot) is first waited for until its
// shell prompts; a resumed guest's shell prompted before the snapshot.
func scripted(ctx context.Context, cfg machine.Config, create func(machine.Config) (*machine.Machine, error), command string, report bool, step func(string, ...any), waitBoot bool) error {
	start := time.Now()
	s, err := session.StartWith(ctx, cfg, create, os.Stdout)
	if err != nil {
		if errors.Is(err, machine.ErrInvalid) {
			return cli.Exit(err.Error(), exitUsage)
		}
		return err
	}
	defer s.Close()
	if waitBoot {
		if _, err := s.Console.Expect(ctx, regexp.MustCompile(`cpus=\d+`)); err != nil {
			return fmt.Errorf("the guest did not reach userspace: %w", err)
		}
		// Type only once the shell shows its prompt: a line typed while init
		// hands the console to the shell can be lost.
		if _, err := s.Console.Expect(ctx, regexp.MustCompile(`(?m)^\$ `)); err != nil {
			return fmt.Errorf("no shell prompt: %w", err)
		}
		step("guest userspace up after %v", time.Since(start).Round(time.Millisecond))
	}
	out, status, err := s.Console.Run(ctx, command)
	if err != nil {
		return err
	}
	step("%q exited %d after %v; its output:\n%s", command, status, time.Since(start).Round(time.Millisecond), strings.TrimRight(out, "\n"))
	step("powering off")
	if err := s.Console.Send("poweroff\n"); err != nil {
		return err
	}
	how, err := s.Wait(ctx)
	if err != nil {
		return err
	}
	step("guest ended: %v, %v after start", how, time.Since(start).Round(time.Millisecond))
	if report {
		writeAccounting(os.Stderr, s.Machine.Buses(), start)
	}
	if status != 0 {
		return cli.Exit(fmt.Sprintf("guest command exited %d", status), exitError)
	}
	return nil
}
