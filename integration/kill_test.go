package integration

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
)

// TestBuildKilled interrupts `bunkerbuild build` in each stage, with
// SIGINT (which it handles) and SIGKILL (which it cannot): no artifact is
// left at the output path, no process of the build survives, and after
// SIGINT nothing of the build is left at all.
func TestBuildKilled(t *testing.T) {
	kvmtest.Require(t)
	for _, tc := range []struct {
		stage string
		after time.Duration // after the stage's first progress line
		sig   syscall.Signal
	}{
		{"guest", 0, syscall.SIGKILL},
		{"boot", 3 * time.Second, syscall.SIGINT},
		{"boot", 3 * time.Second, syscall.SIGKILL},
		{"sign", 0, syscall.SIGINT},
		{"sign", 0, syscall.SIGKILL},
	} {
		t.Run(tc.stage+"/"+tc.sig.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			dir, tmp := t.TempDir(), t.TempDir()
			recipeFile, artifact := buildRecipe(t, dir)
			cmd := exec.CommandContext(ctx, os.Getenv("BUNKERBUILD_BIN"), "build", recipeFile)
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			sc := bufio.NewScanner(stderr)
			sent := false
			for sc.Scan() {
				line := sc.Text()
				log.WriteString(line + "\n")
				if !sent && strings.Contains(line, "] "+tc.stage+" ") {
					time.Sleep(tc.after)
					cmd.Process.Signal(tc.sig)
					sent = true
				}
			}
			err = cmd.Wait()
			t.Logf("build, %v in stage %s:\n%s", tc.sig, tc.stage, log.String())
			if !sent {
				t.Fatalf("the build never reached stage %s (%v)", tc.stage, err)
			}
			if err == nil {
				t.Fatal("the build succeeded after the signal")
			}
			if _, err := os.Stat(artifact); !os.IsNotExist(err) {
				t.Errorf("an artifact is at %s after the build was killed (%v)", artifact, err)
			}
			if left := strayProcesses(t, tmp); len(left) > 0 {
				t.Errorf("processes of the build survive: %q", left)
			}
			if tc.sig == syscall.SIGINT {
				if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
					t.Errorf("the interrupted build left %d entries in its TMPDIR, e.g. %s", len(ents), ents[0].Name())
				}
				if ents, _ := os.ReadDir(dir); len(ents) != 3 {
					t.Errorf("the interrupted build left %d entries beside the recipe; want the recipe and the keys only", len(ents))
				}
			}
		})
	}
}

// strayProcesses returns the command lines of processes that mention
// tmp, the killed build's TMPDIR, or are a sandbox's init, waiting a few seconds for them to go
// (the sandbox dies of its parent's death signal).
func strayProcesses(t *testing.T, tmp string) []string {
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		left = nil
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			b, err := os.ReadFile(p)
			// The boot stage's command line names its directory in tmp;
			// the sandbox's init has its own argv[0] until it execs it.
			if err == nil && (strings.Contains(string(b), tmp) || strings.HasPrefix(string(b), "bunkerbuild-isolate-init")) {
				left = append(left, strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
	}
}
