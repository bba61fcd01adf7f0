package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/commands"
	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
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

func guestCommand() *cli.Command {
	return &cli.Command{
		Name:  "guest",
		Usage: "fetch the stock Debian kernel and build the u-root initramfs of the default guest; print their paths",
		Flags: []cli.Flag{commands.CacheFlag()},
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
			commands.CacheFlag(),
			&cli.StringFlag{Name: "kernel", Usage: "boot this bzImage instead of the default guest's kernel"},
			&cli.StringFlag{Name: "initrd", Usage: "use this initramfs instead of the default guest's"},
			&cli.StringFlag{Name: "command", Value: "bunkerguest info", Usage: "shell command to run in the guest"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Minute, Usage: "give up after this long"},
		}, commands.VMFlags()...),
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
	cfg, err := commands.MachineConfig(c, kernel, initrd, commands.DefaultCmdline)
	if err != nil {
		return err
	}
	step("booting %s with %s RAM and %d vCPUs on the %s profile", kernel, c.String("mem"), cfg.CPUs, cfg.Profile)
	return commands.Scripted(ctx, cfg, machine.New, c.String("command"), c.Bool("report"), step, true)
}
