package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/commands"
	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "pull, verify, resume and supervise the guests a host config names, each in its own process, until they end",
		ArgsUsage: "HOST.yaml",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return commands.UsageError("run takes a host config file")
			}
			cfg, err := loadConfig(c.Args().First())
			if err != nil {
				return cli.Exit(err.Error(), commands.ExitUsage)
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			results := supervise(ctx, self, cfg, os.Stdout, os.Stderr)
			failed := 0
			for _, r := range results {
				if r.status != commands.ExitPoweroff {
					failed++
				}
			}
			if failed > 0 {
				return cli.Exit(fmt.Sprintf("%d of %d guests did not power off", failed, len(results)), commands.ExitError)
			}
			return nil
		},
	}
}

// result is how a guest's supervision ended.
type result struct {
	name     string
	status   int // the last resume's exit status
	restarts int
}

// meaning says what a resume's exit status means.
func meaning(status int) string {
	switch status {
	case commands.ExitPoweroff:
		return "the guest powered off"
	case commands.ExitUsage:
		return "the artifact or the arguments were refused"
	case commands.ExitStopped:
		return "stopped by a signal"
	case commands.ExitNeedsBoot:
		return "the guest rebooted: it needs a fresh boot through bunkerbuild build"
	case commands.ExitError:
		return "the VMM failed"
	}
	return fmt.Sprintf("resume exited with status %d", status)
}

// supervise runs every guest of cfg at once and returns when all have
// ended. A guest whose VMM fails is restarted, with backoff, if its
// restart policy says so; a guest that powered off, rebooted, or was
// refused is not.
func supervise(ctx context.Context, self string, cfg *hostConfig, stdout, log io.Writer) []result {
	var mu sync.Mutex
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(log, "bunkerhost: %s "+format+"\n", append([]any{time.Now().Format(time.RFC3339)}, args...)...)
	}
	results := make([]result, len(cfg.Guests))
	var wg sync.WaitGroup
	for i, g := range cfg.Guests {
		wg.Go(func() { results[i] = superviseOne(ctx, self, cfg, g, &lockedWriter{mu: &mu, w: stdout}, logf) })
	}
	wg.Wait()
	return results
}

func superviseOne(ctx context.Context, self string, cfg *hostConfig, g guestConfig, stdout io.Writer, logf func(string, ...any)) result {
	r := result{name: g.Name}
	cacheDir := cfg.Cache.Dir
	if cacheDir == "" {
		cacheDir = filepath.Join(guestimage.DefaultCacheDir(), "artifacts")
	}
	for {
		argv := []string{"resume", "--key", g.Key, "--cache", cacheDir, "--cache-max", cfg.Cache.Max}
		if cfg.Registry.PlainHTTP {
			argv = append(argv, "--plain-http")
		}
		if g.Serial != nil && !*g.Serial {
			argv = append(argv, "--serial=false")
		}
		for _, id := range slices.Sorted(maps.Keys(g.Disks)) {
			path := g.Disks[id]
			if _, err := os.Lstat(path); err == nil {
				// The last run's disk: kept once, for a look after a failure.
				if err := os.Rename(path, path+".prev"); err != nil {
					logf("%s: disk %s: %v", g.Name, id, err)
					r.status = commands.ExitError
					return r
				}
				logf("%s: disk %s: the previous run's copy is now %s.prev", g.Name, id, path)
			}
			argv = append(argv, "--disk", id+"="+path)
		}
		if g.Tap != "" {
			argv = append(argv, "--tap", g.Tap)
			if g.Netns != "" {
				argv = append(argv, "--netns", g.Netns)
			}
		}
		argv = append(argv, g.Artifact)
		var out io.Writer = &prefixWriter{prefix: g.Name + "| ", w: stdout}
		var logFile *os.File
		if g.ConsoleLog != "" {
			f, err := os.OpenFile(g.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
			if err != nil {
				logf("%s: console log: %v", g.Name, err)
				r.status = commands.ExitError
				return r
			}
			out, logFile = f, f
		}
		cmd := exec.CommandContext(ctx, self, argv...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 30 * time.Second
		logf("%s: resuming %s", g.Name, g.Artifact)
		start := time.Now()
		err := cmd.Run()
		if logFile != nil {
			logFile.Close()
		}
		var ee *exec.ExitError
		switch {
		case err == nil:
			r.status = 0
		case errors.As(err, &ee) && ee.ExitCode() >= 0:
			r.status = ee.ExitCode()
		case ctx.Err() != nil:
			r.status = commands.ExitStopped
		default:
			logf("%s: %v", g.Name, err)
			r.status = commands.ExitError
		}
		logf("%s: %s after %v (status %d)", g.Name, meaning(r.status), time.Since(start).Round(time.Millisecond), r.status)
		if r.status != commands.ExitError || g.Restart != "on-failure" || ctx.Err() != nil {
			return r
		}
		if r.restarts >= *g.MaxRestarts {
			logf("%s: not restarting: %d restarts already", g.Name, r.restarts)
			return r
		}
		r.restarts++
		backoff := min(backoffBase<<r.restarts, 30*time.Second)
		logf("%s: restarting in %v (restart %d of %d)", g.Name, backoff, r.restarts, *g.MaxRestarts)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			r.status = commands.ExitStopped
			return r
		}
	}
}

// backoffBase is the wait before the first restart; it doubles after each.
var backoffBase = time.Second

// prefixWriter starts each line with prefix.
type prefixWriter struct {
	prefix  string
	w       io.Writer
	midLine bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var buf bytes.Buffer
	for _, c := range b {
		if !p.midLine {
			buf.WriteString(p.prefix)
			p.midLine = true
		}
		buf.WriteByte(c)
		if c == '\n' {
			p.midLine = false
		}
	}
	if _, err := p.w.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// lockedWriter serialises writes from several guests.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
