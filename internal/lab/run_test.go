package lab_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/lab"
)

// TestRun boots L1 for real, once per case. It needs QEMU (`bunkerlab
// prepare`) and fails without it.
func TestRun(t *testing.T) {
	if err := lab.Available(lab.Config{}); err != nil {
		t.Fatalf("the lab is unavailable, so it cannot be tested: %v", err)
	}
	// Fetch the kernel and build the initramfs once, before the cases
	// race to do it.
	ctx := context.Background()
	if err := lab.Prepare(ctx, lab.Config{Progress: tWriter{t}}); err != nil {
		t.Fatal(err)
	}
	hostDir := t.TempDir()
	tests := []struct {
		name       string
		cmd        lab.Command
		wantCode   int
		wantStdout string
		wantStderr string
		wantErr    string
	}{
		{name: "true", cmd: lab.Command{Args: []string{"/usr/bin/true"}}},
		{name: "exit status and split output", wantCode: 7, wantStdout: "out\n", wantStderr: "err\n",
			cmd: lab.Command{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, Env: []string{"PATH=/usr/bin:/bin"}}},
		{name: "kvm works inside", wantStdout: "kvm 1 /dev/shm\n",
			cmd: lab.Command{Args: []string{"sh", "-c", `test -c /dev/kvm && echo kvm "$BUNKERBUILD_LAB" "$TMPDIR"`}}},
		{name: "signal", wantCode: 128 + 9,
			cmd: lab.Command{Args: []string{"sh", "-c", "kill -KILL $$"}}},
		{name: "dir, env and host files", wantStdout: hostDir + "\n",
			cmd: lab.Command{Args: []string{"sh", "-c", `pwd; echo "$GREETING" > from-l1`}, Env: []string{"GREETING=hello"}, Dir: hostDir}},
		{name: "missing command", wantErr: "start /nonexistent/cmd",
			cmd: lab.Command{Args: []string{"/nonexistent/cmd"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			c := tt.cmd
			c.Stdout, c.Stderr = &stdout, &stderr
			code, err := lab.Run(ctx, lab.Config{Progress: tWriter{t}}, c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Run = %d, %v; want error %q", code, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if code != tt.wantCode || stdout.String() != tt.wantStdout || stderr.String() != tt.wantStderr {
				t.Errorf("Run = %d, stdout %q, stderr %q; want %d, %q, %q",
					code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		b, err := os.ReadFile(filepath.Join(hostDir, "from-l1"))
		if err != nil || string(b) != "hello\n" {
			t.Errorf("file written in L1: %q, %v; want %q", b, err, "hello\n")
		}
	})
}

// TestRunCanceled checks that Run stops QEMU when its context ends.
func TestRunCanceled(t *testing.T) {
	if err := lab.Available(lab.Config{}); err != nil {
		t.Fatalf("the lab is unavailable, so it cannot be tested: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	code, err := lab.Run(ctx, lab.Config{Progress: tWriter{t}}, lab.Command{Args: []string{"sleep", "600"}})
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("Run = %d, %v; want a deadline error", code, err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Run returned %v after its context ended", d)
	}
}

// tWriter logs progress lines through t.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
