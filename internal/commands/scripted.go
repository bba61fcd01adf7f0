package commands

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// Scripted starts the machine create makes from cfg, its console on
// stdout, runs command in the guest's shell, prints the output, and powers
// the guest off. A booting guest (waitBoot) is first waited for until its
// shell prompts; a resumed guest's shell prompted before the snapshot.
func Scripted(ctx context.Context, cfg machine.Config, create func(machine.Config) (*machine.Machine, error), command string, report bool, step func(string, ...any), waitBoot bool) error {
	start := time.Now()
	s, err := session.StartWith(ctx, cfg, create, os.Stdout)
	if err != nil {
		if errors.Is(err, machine.ErrInvalid) {
			return cli.Exit(err.Error(), ExitUsage)
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
		// A guest that stopped answering: say where its vCPUs are.
		step("the guest did not answer; its vCPUs:\n%s", s.Machine.DebugState())
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
		WriteAccounting(os.Stderr, s.Machine.Buses(), start)
	}
	if status != 0 {
		return cli.Exit(fmt.Sprintf("guest command exited %d", status), ExitError)
	}
	return nil
}
