// Package kvmtest runs tests that need KVM wherever /dev/kvm works: directly
// on the host, or else inside the nested lab (package lab).
//
// A package whose tests need KVM calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { kvmtest.Main(m) }
//
// and each such test may call Require first, for a clear failure if it runs
// without Main.
package kvmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/lab"
)

// EnvForceLab, set to "1", makes Main use the lab even where /dev/kvm works.
const EnvForceLab = "BUNKERBUILD_FORCE_LAB"

const (
	// kvmGetAPIVersion is the KVM_GET_API_VERSION ioctl.
	kvmGetAPIVersion = 0xAE00
	// kvmAPIVersion is the only KVM API version there is.
	kvmAPIVersion = 12
)

// Check returns nil if /dev/kvm can be opened read-write, speaks KVM API
// version 12 and is not served by PVM alone, or an error that says what is
// wrong.
func Check() error {
	if err := checkBackend("/sys/module"); err != nil {
		return err
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("/dev/kvm: KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("/dev/kvm: KVM API version %d, want %d", v, kvmAPIVersion)
	}
	return nil
}

// checkBackend refuses a KVM that cannot run unmodified guests: some cloud
// VMs serve /dev/kvm with the kvm_pvm module, which boots only kernels built
// as PVM guests. modules is /sys/module.
func checkBackend(modules string) error {
	has := func(mod string) bool {
		_, err := os.Stat(filepath.Join(modules, mod))
		return err == nil
	}
	if has("kvm_pvm") && !has("kvm_amd") && !has("kvm_intel") {
		return errors.New("/dev/kvm is served by kvm_pvm, which cannot run unmodified guest kernels")
	}
	return nil
}

// Require fails t at once, saying why, if /dev/kvm is unusable.
func Require(t testing.TB) {
	t.Helper()
	if err := Check(); err != nil {
		t.Fatalf("kvmtest: this test needs KVM: %v (call kvmtest.Main from TestMain to run it inside the nested lab where /dev/kvm is missing)", err)
	}
}

// Main runs the tests of m and exits with their status:
//   - inside the lab, directly (and fails if L1's /dev/kvm is unusable);
//   - where /dev/kvm works and EnvForceLab is not "1", directly;
//   - else, if the lab is available, by running this test binary again, with
//     the same arguments, environment and directory, inside the lab;
//   - else it fails, saying why and how to prepare the lab.
//
// It prints on stderr where the tests ran.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv(lab.EnvInside) == "1" {
		if err := Check(); err != nil {
			fmt.Fprintf(os.Stderr, "kvmtest: FAIL: inside the nested lab, but %v\n", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "kvmtest: running KVM tests inside the nested lab")
		return m.Run()
	}
	why := errors.New(EnvForceLab + "=1")
	if os.Getenv(EnvForceLab) != "1" {
		if why = Check(); why == nil {
			fmt.Fprintln(os.Stderr, "kvmtest: running KVM tests directly on /dev/kvm")
			return m.Run()
		}
	}
	if err := lab.Available(lab.Config{}); err != nil {
		fmt.Fprintf(os.Stderr, "kvmtest: FAIL: these tests need KVM; /dev/kvm is not used (%v) and the nested lab is unavailable: %v\n"+
			"kvmtest: prepare the lab once with `go run ./cmd/bunkerlab prepare` (as root on Debian 12), then run the tests again\n", why, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "kvmtest: /dev/kvm is not used (%v): running KVM tests inside the nested lab\n", why)
	code, err := reexec()
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvmtest: FAIL: %v\n", err)
		return 1
	}
	return code
}

// reexec runs this test binary inside the lab.
func reexec() (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return -1, fmt.Errorf("find this test binary: %w", err)
	}
	dir, err := os.Getwd()
	if err != nil {
		return -1, fmt.Errorf("get working directory: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return lab.Run(ctx, lab.Config{Progress: os.Stderr}, lab.Command{
		Args:   append([]string{exe}, os.Args[1:]...),
		Env:    os.Environ(),
		Dir:    dir,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
	})
}
