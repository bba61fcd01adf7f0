package integration

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/pipeline"
	"github.com/bunkerbuild/bunkerbuild/pipeline/resume"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// legacyCmdline is the command line syslinux gives the kernel: the
// serial port during the build, hvc0 as /dev/console so that it survives
// the handoff, and the boot disk's FAT partition mounted on /boot.
const legacyCmdline = "console=ttyS0 console=hvc0 reboot=k panic=-1 i8042.noaux quiet bunkerguest.count=/tmp/count bunkerguest.mount=/dev/vda1:/boot:vfat"

// legacyRecipe writes a recipe whose guest is a legacy disk built from
// parts: an MBR disk with syslinux, the stock kernel and the initramfs on
// its FAT partition, booted through SeaBIOS.
func legacyRecipe(t testing.TB, dir string) (recipeFile, artifact string) {
	t.Helper()
	if _, err := snapshots.GenerateKey(filepath.Join(dir, "key"), filepath.Join(dir, "key.pub")); err != nil {
		t.Fatal(err)
	}
	recipeFile = filepath.Join(dir, "legacy.yaml")
	rec := fmt.Sprintf(`apiVersion: bunkerbuild/v1
name: legacy
guest:
  kernel: %s
  initrd: %s
  cmdline: %s
  bootloader: syslinux
  boot-disk-size: 128M
machine:
  memory: 512M
  cpus: 2
booted:
  guest-signal: true
  settle: 1s
  timeout: 4m
output:
  path: legacy.snap
  signing-key: key
`, os.Getenv(envKernel), os.Getenv(envInitrd), legacyCmdline)
	if err := os.WriteFile(recipeFile, []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	return recipeFile, filepath.Join(dir, "legacy.snap")
}

// TestLegacyDiskBoot builds a BIOS-bootable disk from parts, boots it
// SeaBIOS → syslinux → kernel → userspace on the full profile with the
// firmware platform, and resumes the artifact on the minimal profile,
// which has no BIOS, no fw_cfg and no legacy devices.
func TestLegacyDiskBoot(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	recipeFile, artifact := legacyRecipe(t, dir)
	_, progress, status, err := bunkerbuild(ctx, "build", recipeFile)
	t.Logf("bunkerbuild build:\n%s", progress)
	if err != nil || status != 0 {
		t.Fatalf("bunkerbuild build: status %d, %v", status, err)
	}

	// The boot chain: the firmware and the boot loader on the serial port
	// (the other console), in order; then, on hvc0 (/dev/console), the
	// initramfs's banner and the guest tool's facts: the kernel it runs
	// on, both CPUs, ready.
	serial, err := os.ReadFile(artifact + pipeline.OtherConsoleLogSuffix)
	if err != nil {
		t.Fatal(err)
	}
	guest, err := os.ReadFile(artifact + pipeline.ConsoleLogSuffix)
	if err != nil {
		t.Fatal(err)
	}
	at := 0
	for _, want := range []string{"SeaBIOS (version", "Booting from Hard Disk", "SYSLINUX 6."} {
		i := bytes.Index(serial[at:], []byte(want))
		if i < 0 {
			t.Fatalf("the serial log lacks %q after byte %d:\n%s", want, at, serial)
		}
		at += i
	}
	at = 0
	for _, want := range []string{"Welcome to u-root", "cpus=2", "kernel_release=", "BUNKERGUEST-READY"} {
		i := bytes.Index(guest[at:], []byte(want))
		if i < 0 {
			t.Fatalf("the guest's console log lacks %q after byte %d:\n%s", want, at, guest)
		}
		at += i
	}

	pub, err := snapshots.LoadPublicKey(filepath.Join(dir, "key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	cfg := machine.Config{Policy: bus.Deny, Log: log.New(&logBuf, "vmm: ", log.Lmicroseconds)}
	s, err := session.StartWith(ctx, cfg, func(cfg machine.Config) (*machine.Machine, error) {
		r, err := resume.ArtifactWith(artifact, pub, cfg, resume.Options{})
		if err != nil {
			return nil, err
		}
		return r.Machine, nil
	}, nil)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console after resume:\n%s\nVMM log:\n%s\nvCPUs:\n%s", s.Console.Output(), logBuf.String(), s.Machine.DebugState())
		}
		s.Close()
	})

	// The console is hvc0; the counter started at boot keeps counting.
	if got := run(t, ctx, s, "cat /proc/consoles"); !regexp.MustCompile(`(?m)^hvc0\s.*\(EC`).MatchString(got) {
		t.Errorf("/proc/consoles:\n%s\nwant hvc0 as the enabled console", got)
	}
	checkCarriesOn(t, ctx, s)
	// Linux took the machine's ACPI tables from the BIOS's table loader,
	// and runs on every CPU.
	if got := run(t, ctx, s, "cat /sys/devices/system/cpu/online"); got != "0-1" {
		t.Errorf("CPUs online: %q, want 0-1", got)
	}
	if got := run(t, ctx, s, "cat /sys/firmware/acpi/tables/DSDT"); !strings.Contains(got, "BUNKER") {
		t.Errorf("the guest's DSDT is not ours (no BUNKER OEM ID)")
	}
	// The boot disk, mounted from its FAT partition before the capture,
	// is read and written after.
	if got := run(t, ctx, s, "cat /sys/block/vda/serial"); got != "boot" {
		t.Errorf("disk serial %q, want boot", got)
	}
	if got := run(t, ctx, s, "ls /boot"); !strings.Contains(got, "vmlinuz") {
		t.Errorf("ls /boot: %q, want the kernel", got)
	}
	run(t, ctx, s, "echo written after resume > /boot/after.txt && sync")
	if got := run(t, ctx, s, "cat /boot/after.txt"); got != "written after resume" {
		t.Errorf("read back %q from the boot disk", got)
	}
	// Nothing of the BIOS platform is left, and the guest reached for
	// none of it: the only denied port is the vanished serial port.
	checkNoLegacy(t, s.Machine)
	checkOnlySerialDenied(t, s.Machine)
	powerOff(t, ctx, s)
}
