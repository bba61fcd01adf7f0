package integration

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/pipeline"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// TestBuildAndResume runs `bunkerbuild build` on a recipe for the default
// guest, its boot stage in the sandbox, then resumes the signed artifact on the minimal VMM and uses the
// guest; a tampered copy of the artifact is refused.
func TestBuildAndResume(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	pub, err := snapshots.GenerateKey(filepath.Join(dir, "key"), filepath.Join(dir, "key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	recipeFile := filepath.Join(dir, "guest.yaml")
	artifact := filepath.Join(dir, "guest.bbsnap")
	rec := fmt.Sprintf(`apiVersion: bunkerbuild/v1
name: integration
guest:
  kernel: %s
  initrd: %s
  cmdline: %s
machine:
  memory: 512M
  cpus: 2
booted:
  console: 'cpus=\d+'
  settle: 1s
  timeout: 4m
output:
  path: guest.bbsnap
  signing-key: key
`, os.Getenv(envKernel), os.Getenv(envInitrd), guestCmdline)
	if err := os.WriteFile(recipeFile, []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.CommandContext(ctx, os.Getenv("BUNKERBUILD_BIN"), "build", recipeFile)
	out, err := build.CombinedOutput()
	t.Logf("bunkerbuild build:\n%s", out)
	if err != nil {
		t.Fatalf("bunkerbuild build: %v", err)
	}

	// A tampered copy is refused before anything reaches KVM.
	b, err := os.ReadFile(artifact)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	tampered := filepath.Join(dir, "tampered.bbsnap")
	if err := os.WriteFile(tampered, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pipeline.Resume(tampered, pub, machine.Config{}); err == nil {
		t.Fatal("a tampered artifact was resumed")
	} else {
		t.Logf("tampered artifact refused: %v", err)
	}

	var logBuf bytes.Buffer
	cfg := machine.Config{SerialConsole: true, Log: log.New(&logBuf, "vmm: ", log.Lmicroseconds)}
	resume := func(cfg machine.Config) (*machine.Machine, error) {
		m, _, err := pipeline.Resume(artifact, pub, cfg)
		return m, err
	}
	start := time.Now()
	r, err := session.StartWith(ctx, cfg, resume, nil)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	defer func() {
		r.Close()
		if t.Failed() {
			t.Logf("console after resume:\n%s\nVMM log:\n%s", r.Console.Output(), logBuf.String())
		}
	}()
	t.Logf("resumed in %v", time.Since(start).Round(time.Millisecond))
	checkResumedGuest(t, ctx, r, 2)
}
