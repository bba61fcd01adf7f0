// Command bunkerlab runs commands with a working /dev/kvm on machines that
// have none, inside a nested QEMU VM (see package lab).
//
//	bunkerlab prepare                       install QEMU, fetch the kernel, build the initramfs, boot once
//	bunkerlab run [flags] -- CMD ARGS...    run CMD inside L1; exit with its status
//	bunkerlab test [flags] [-- go test args] run `go test` with each test binary inside L1
//
// run exits with the command's status (128+N if signal N killed it), or 125
// if the lab itself failed.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/lab"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// exitLabFailed is run's exit status when the lab, not the command, failed.
const exitLabFailed = 125

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := &cli.App{
		Name:  "bunkerlab",
		Usage: "run commands with /dev/kvm inside a nested QEMU VM (L1), for machines without KVM",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cache-dir", Usage: "kernel and initramfs cache (default: guestimage's cache directory)"},
		},
		Commands:       []*cli.Command{prepareCommand(), runCommand(), testCommand()},
		ExitErrHandler: func(*cli.Context, error) {},
	}
	err := app.RunContext(ctx, os.Args)
	if code, ok := exitCode(err); ok {
		os.Exit(code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bunkerlab:", err)
		os.Exit(1)
	}
}

// exitCode extracts the status of a cli.ExitCoder with no message.
func exitCode(err error) (int, bool) {
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.Error() == "" {
		return ec.ExitCode(), true
	}
	return 0, false
}

var vmFlags = []cli.Flag{
	&cli.IntFlag{Name: "mem", Value: lab.DefaultMemoryMiB, Usage: "L1 memory in MiB"},
	&cli.IntFlag{Name: "cpus", Value: lab.DefaultCPUs, Usage: "L1 CPUs"},
	&cli.BoolFlag{Name: "console", Usage: "show L1's serial console (kernel and init messages) on stderr"},
	&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress lines"},
}

// config builds the lab configuration from the flags of c.
func config(c *cli.Context) lab.Config {
	cfg := lab.Config{CacheDir: c.String("cache-dir"), Progress: os.Stderr}
	if c.Command.Name == "prepare" {
		return cfg
	}
	cfg.MemoryMiB, cfg.CPUs = c.Int("mem"), c.Int("cpus")
	if c.Bool("console") {
		cfg.Console = os.Stderr
	}
	if c.Bool("quiet") {
		cfg.Progress = nil
	}
	return cfg
}

func prepareCommand() *cli.Command {
	return &cli.Command{
		Name:  "prepare",
		Usage: "install QEMU if missing (Debian 12, as root), fetch L1's kernel, build its initramfs, and boot L1 once",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "if-needed", Usage: "do nothing where /dev/kvm can run the project's guests"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("if-needed") {
				err := kvm.Available()
				if err == nil {
					fmt.Fprintln(os.Stderr, "bunkerlab: /dev/kvm works here; the lab is not needed")
					return nil
				}
				fmt.Fprintf(os.Stderr, "bunkerlab: the lab is needed: %v\n", err)
			}
			cfg := config(c)
			if err := lab.Prepare(c.Context, cfg); err != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, "bunkerlab: checking the lab with `true` inside L1")
			code, err := lab.Run(c.Context, cfg, lab.Command{Args: []string{"true"}, Env: os.Environ(), Dir: "/"})
			if err != nil {
				return err
			}
			if code != 0 {
				return fmt.Errorf("check: `true` exited %d inside L1", code)
			}
			fmt.Fprintln(os.Stderr, "bunkerlab: the lab works; use `bunkerlab run -- CMD ARGS...`")
			return nil
		},
	}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a command inside L1, with the host's files, environment and working directory; exit with its status",
		ArgsUsage: "-- CMD ARGS...",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "if-needed", Usage: "run the command directly on this machine where /dev/kvm can run the project's guests"},
		}, vmFlags...),
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return errors.New("run: no command given (bunkerlab run -- CMD ARGS...)")
			}
			if c.Bool("if-needed") && kvm.Available() == nil {
				return runDirect(c.Context, c.Args().Slice())
			}
			dir, err := os.Getwd()
			if err != nil {
				return fmt.Errorf("run: %w", err)
			}
			code, err := lab.Run(c.Context, config(c), lab.Command{
				Args: c.Args().Slice(), Env: os.Environ(), Dir: dir,
				Stdout: os.Stdout, Stderr: os.Stderr,
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, "bunkerlab:", err)
				return cli.Exit("", exitLabFailed)
			}
			return cli.Exit("", code)
		},
	}
}

// runDirect runs argv on this machine and exits with its status.
func runDirect(ctx context.Context, argv []string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return cli.Exit("", ee.ExitCode())
	}
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	return nil
}

func testCommand() *cli.Command {
	return &cli.Command{
		Name:      "test",
		Usage:     "run `go test` with each test binary run inside L1 (go test -exec 'bunkerlab run --')",
		ArgsUsage: "[-- go test args]",
		Flags:     vmFlags,
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("test: find bunkerlab: %w", err)
			}
			args := append([]string{"test", "-exec", execWrapper(c, self)}, c.Args().Slice()...)
			cmd := exec.CommandContext(c.Context, "go", args...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			err = cmd.Run()
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				return cli.Exit("", ee.ExitCode())
			}
			if err != nil {
				return fmt.Errorf("test: %w", err)
			}
			return nil
		},
	}
}

// execWrapper returns the -exec value of go test that runs each test binary
// with `bunkerlab run` and the lab flags of c.
func execWrapper(c *cli.Context, self string) string {
	w := strconv.Quote(self)
	if dir := c.String("cache-dir"); dir != "" {
		w += " --cache-dir " + strconv.Quote(dir)
	}
	w += fmt.Sprintf(" run --mem %d --cpus %d", c.Int("mem"), c.Int("cpus"))
	if c.Bool("console") {
		w += " --console"
	}
	if c.Bool("quiet") {
		w += " --quiet"
	}
	return w + " --"
}
