package kvmtest_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/lab"
)

func TestMain(m *testing.M) { kvmtest.Main(m) }

// TestKVM creates a VM, which needs a working KVM, not just /dev/kvm.
func TestKVM(t *testing.T) {
	kvmtest.Require(t)
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const kvmCreateVM = 0xAE01
	vm, err := unix.IoctlRetInt(int(f.Fd()), kvmCreateVM)
	if err != nil {
		t.Fatalf("KVM_CREATE_VM: %v", err)
	}
	unix.Close(vm)
}

// rerun runs this test binary again for TestKVM with env added and returns
// its exit code and output.
func rerun(t *testing.T, env ...string) (int, string) {
	t.Helper()
	if os.Getenv(lab.EnvInside) == "1" {
		t.Skip("inside the lab already: these tests check how Main gets there")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKVM$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("rerun: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func TestMainForcedIntoLab(t *testing.T) {
	code, out := rerun(t, kvmtest.EnvForceLab+"=1")
	for _, want := range []string{
		"kvmtest: /dev/kvm is not used (BUNKERBUILD_FORCE_LAB=1): running KVM tests inside the nested lab",
		"kvmtest: running KVM tests inside the nested lab",
		"--- PASS: TestKVM",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if code != 0 || t.Failed() {
		t.Fatalf("exit code %d; output:\n%s", code, out)
	}
}

func TestMainFailsWithoutLab(t *testing.T) {
	// Without PATH there is neither QEMU nor go.
	code, out := rerun(t, kvmtest.EnvForceLab+"=1", "PATH=")
	for _, want := range []string{"kvmtest: FAIL:", "the nested lab is unavailable", "bunkerlab prepare"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if code != 1 || t.Failed() {
		t.Fatalf("exit code %d, want 1; output:\n%s", code, out)
	}
}
