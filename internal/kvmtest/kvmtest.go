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
	"syscall"
	"testing"

	"github.com/bunkerbuild/bunkerbuild/internal/lab"
	"github.com/bunkerbuild/bunkerbuild/vmm/kvm"
)

// EnvForceLab, set to "1", makes Main use the lab even where /dev/kvm works.
const EnvForceLab = "BUNKERBUILD_FORCE_LAB"

const (
	// kvmGetAPIVersion is the KVM_GET_API_VERSION ioctl.
	kvmGetAPIVersion = 0xAE00
	// kvmAPIVersion is the only KVM API version there is.
	kvmAPIVersion = 12
)

// Check returns nil if /dev/kvm can run the project's guests, or an error
// that says what is wrong (see kvm.Available).
func Check() error { return kvm.Available() }

// EnvLog names a file to which Require appends one line per KVM test:
// where it ran ("direct" or "lab") and its name. .ci/run counts them.
const EnvLog = "BUNKERBUILD_KVMTEST_LOG"

func record(t testing.TB) {
	p := os.Getenv(EnvLog)
	if p == "" {
		return
	}
	where := "direct"
	if os.Getenv(lab.EnvInside) == "1" {
		where = "lab"
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("kvmtest: record this test in %s: %v", p, err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\t%s\n", where, t.Name()); err != nil {
		t.Fatalf("kvmtest: record this test in %s: %v", p, err)
	}
}

// Require fails t at once, saying why, if /dev/kvm is unusable.
func Require(t testing.TB) {
	t.Helper()
	if err := Check(); err != nil {
		t.Fatalf("kvmtest: this test needs KVM: %v (call kvmtest.Main from TestMain to run it inside the nested lab where /dev/kvm is missing)", err)
	}
	record(t)
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
