package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/commands"
	"github.com/bunkerbuild/bunkerbuild/pipeline"
	"github.com/bunkerbuild/bunkerbuild/pipeline/recipe"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
)

// version is recorded in the artifacts this binary builds.
const version = "0.1.0"

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "boot a recipe's guest on the isolated full-device VMM, capture it once booted, and write a signed artifact",
		ArgsUsage: "RECIPE",
		Flags: []cli.Flag{
			commands.CacheFlag(),
			&cli.BoolFlag{Name: "no-isolate", Usage: "run the boot stage as a plain child process, without namespaces (for hosts that cannot create them)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return commands.UsageError("build takes one recipe file, got %d arguments", c.NArg())
			}
			r, err := recipe.Load(c.Args().First())
			if err != nil {
				return cli.Exit(err.Error(), commands.ExitUsage)
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			run := isolatedRunner
			if c.Bool("no-isolate") {
				fmt.Fprintln(os.Stderr, "bunkerbuild: warning: --no-isolate: the boot-time VMM runs without a sandbox")
				run = plainRunner
			}
			_, err = pipeline.Build(ctx, r, pipeline.BuildOptions{
				Progress: os.Stderr, CacheDir: c.String("cache"),
				StageCommand: []string{self, "boot-stage"}, Run: run, Version: version,
			})
			return err
		},
	}
}

// plainRunner runs the boot stage as an ordinary child process.
func plainRunner(ctx context.Context, argv []string, _, _ []string, _ string, progress io.Writer) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = progress, progress
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd.Run()
}

func bootStageCommand() *cli.Command {
	return &cli.Command{
		Name:      "boot-stage",
		Hidden:    true,
		Usage:     "(internal) the boot stage of build, run in the isolated child",
		ArgsUsage: "DIR",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return commands.UsageError("boot-stage takes the stage directory")
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return pipeline.RunStage(ctx, c.Args().First(), os.Stderr)
		},
	}
}

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "make an Ed25519 signing key pair for artifacts",
		ArgsUsage: "PRIVATE-KEY PUBLIC-KEY",
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return commands.UsageError("keygen takes the private and the public key file names")
			}
			pub, err := snapshots.GenerateKey(c.Args().Get(0), c.Args().Get(1))
			if err != nil {
				return err
			}
			fmt.Printf("key %s: private %s, public %s\n", snapshots.KeyID(pub), c.Args().Get(0), c.Args().Get(1))
			return nil
		},
	}
}
