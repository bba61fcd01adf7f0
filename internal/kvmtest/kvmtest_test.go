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

// envChild marks this test binary run again by rerun, as a package whose
// TestMain calls kvmtest.Main.
const envChild = "KVMTEST_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "1" {
		kvmtest.Main(m)
	}
	os.Exit(m.Run())
}

// TestKVM is the KVM test of the child: it creates a VM, which needs a
// working KVM, not just /dev/kvm.
func TestKVM(t *testing.T) {
	if os.Getenv(envChild) != "1" {
		t.Skip("runs in the child of the TestMain tests")
	}
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

// rerun runs this test binary again as the child, for TestKVM, with env
// added, and returns its exit code and output.
func rerun(t *testing.T, env ...string) (int, string) {
	t.Helper()
	if os.Getenv(lab.EnvInside) == "1" {
		t.Skip("inside the lab already: these tests check how Main gets there")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKVM$", "-test.v")
	cmd.Env = append(os.Environ(), append(env, envChild+"=1")...)
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("rerun: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func checkRun(t *testing.T, code int, out string, wantCode int, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if code != wantCode || t.Failed() {
		t.Fatalf("exit code %d, want %d; output:\n%s", code, wantCode, out)
	}
}

func TestMainDirectOrLab(t *testing.T) {
	where := "kvmtest: running KVM tests directly on /dev/kvm"
	if err := kvmtest.Check(); err != nil {
		where = "kvmtest: /dev/kvm is not used (" + err.Error() + "): running KVM tests inside the nested lab"
	}
	code, out := rerun(t, kvmtest.EnvForceLab+"=")
	checkRun(t, code, out, 0, where, "--- PASS: TestKVM")
}

func TestMainForcedIntoLab(t *testing.T) {
	code, out := rerun(t, kvmtest.EnvForceLab+"=1")
	checkRun(t, code, out, 0,
		"kvmtest: /dev/kvm is not used (BUNKERBUILD_FORCE_LAB=1): running KVM tests inside the nested lab",
		"kvmtest: running KVM tests inside the nested lab",
		"--- PASS: TestKVM")
}

func TestMainFailsWithoutLab(t *testing.T) {
	// Without PATH there is neither QEMU nor go.
	code, out := rerun(t, kvmtest.EnvForceLab+"=1", "PATH=")
	checkRun(t, code, out, 1, "kvmtest: FAIL:", "the nested lab is unavailable", "bunkerlab prepare")
}
