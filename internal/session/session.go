// Package session boots a machine whose serial console is driven by a
// program, for tests, the demo and the build pipeline.
package session

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// Session is a running machine and its console.
type Session struct {
	Machine *machine.Machine
	Console *console.Console
	Started time.Time

	typeIn *io.PipeWriter
	done   chan struct{}
	exit   machine.Exit
	err    error
}

// Start creates the machine described by cfg, with its console connected
// to a console.Console (copied to log, if not nil), and starts running it.
func Start(ctx context.Context, cfg machine.Config, log io.Writer) (*Session, error) {
	return StartWith(ctx, cfg, machine.New, log)
}

// StartWith is Start with the machine made by create from cfg (machine.New,
// or a restore from a snapshot).
func StartWith(ctx context.Context, cfg machine.Config, create func(machine.Config) (*machine.Machine, error), log io.Writer) (*Session, error) {
	pr, pw := io.Pipe()
	s := &Session{typeIn: pw, done: make(chan struct{}), Started: time.Now()}
	s.Console = console.New(pw, log)
	cfg.ConsoleIn, cfg.ConsoleOut = pr, s.Console
	m, err := create(cfg)
	if err != nil {
		pw.Close()
		return nil, err
	}
	s.Machine = m
	go func() {
		defer close(s.done)
		s.exit, s.err = m.Run(ctx)
		pw.Close()
	}()
	return s, nil
}

// Wait waits until the machine stops, and releases it.
func (s *Session) Wait(ctx context.Context) (machine.Exit, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		s.Machine.Stop()
		<-s.done
		s.Machine.Close()
		return machine.ExitStopped, fmt.Errorf("waiting for the guest to stop: %w", context.Cause(ctx))
	}
	if err := s.Machine.Close(); err != nil && s.err == nil {
		s.err = err
	}
	return s.exit, s.err
}

// Close stops the machine if it is still running and releases it. It
// may follow Wait.
func (s *Session) Close() {
	s.Machine.Stop()
	<-s.done
	s.Machine.Close()
}
