// Package integration boots real guests on the project's VMM. Its tests
// need KVM: they run directly where /dev/kvm works and inside the nested lab
// elsewhere (see internal/kvmtest).
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/lab"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// The default guest's files, prepared on the host before the tests run
// (inside the lab there is no apt and no Go toolchain).
const (
	envKernel = "BUNKERBUILD_TEST_KERNEL"
	envInitrd = "BUNKERBUILD_TEST_INITRD"
)

func TestMain(m *testing.M) {
	if ip := os.Getenv(envPeer); ip != "" {
		os.Exit(servePeer(ip)) // the network peer, inside the test's namespace
	}
	machine.SetBootDevices(legacy.New)
	if os.Getenv(lab.EnvInside) != "1" {
		if err := prepareGuest(); err != nil {
			fmt.Fprintf(os.Stderr, "integration: FAIL: prepare the default guest: %v\n", err)
			os.Exit(1)
		}
	}
	kvmtest.Main(m)
}

func prepareGuest() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cache := guestimage.DefaultCacheDir()
	if os.Getenv(envKernel) == "" {
		k, err := guestimage.Kernel(ctx, cache, os.Stderr)
		if err != nil {
			return err
		}
		os.Setenv(envKernel, k)
	}
	if os.Getenv("BUNKERBUILD_BIN") == "" {
		// The benchmark and the build test run the VMM as its own
		// process, as it ships.
		// It lives in the cache, which the lab shares with L1.
		dir := filepath.Join(cache, "bench")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		bin := filepath.Join(dir, "bunkerbuild")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/bunkerbuild/bunkerbuild/cmd/bunkerbuild")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as shipped
		if err := build.Run(); err != nil {
			return fmt.Errorf("build the VMM for the benchmark: %w", err)
		}
		os.Setenv("BUNKERBUILD_BIN", bin)
	}
	if os.Getenv(envInitrd) == "" {
		i, err := guestimage.Initramfs(ctx, cache, os.Stderr)
		if err != nil {
			return err
		}
		os.Setenv(envInitrd, i)
	}
	return nil
}

// defaultGuest returns the default guest's kernel and initramfs.
func defaultGuest(t *testing.T) (kernel, initrd []byte) {
	t.Helper()
	var err error
	if kernel, err = os.ReadFile(os.Getenv(envKernel)); err != nil {
		t.Fatalf("default guest kernel (%s): %v", envKernel, err)
	}
	if initrd, err = os.ReadFile(os.Getenv(envInitrd)); err != nil {
		t.Fatalf("default guest initramfs (%s): %v", envInitrd, err)
	}
	return kernel, initrd
}
