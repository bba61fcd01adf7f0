package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/diskimage"
	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/pipeline"
	"github.com/bunkerbuild/bunkerbuild/pipeline/resume"
)

// legacyCmdline is the command line syslinux gives the kernel: the
// serial port during the build, hvc0 as /dev/console so that it survives
// the handoff, and the boot disk's FAT partition mounted on /boot.
const legacyCmdline = "console=ttyS0 console=hvc0 reboot=k panic=-1 i8042.noaux quiet bunkerguest.count=/tmp/count bunkerguest.mount=/dev/vda1:/boot:vfat"

// legacyRecipe writes a recipe whose guest boots through SeaBIOS from a
// disk, as guest (the recipe's guest section, indented) says.
func legacyRecipe(t testing.TB, dir, guest string) (recipeFile, artifact string) {
	t.Helper()
	return writeRecipe(t, dir, "legacy", guest, "")
}

// fromParts is the guest section of a disk built from parts: an MBR disk
// with syslinux, the stock kernel and the initramfs on its FAT partition.
func fromParts() string {
	return fmt.Sprintf("  kernel: %s\n  initrd: %s\n  cmdline: %s\n  bootloader: syslinux\n  boot-disk-size: 128M",
		os.Getenv(envKernel), os.Getenv(envInitrd), legacyCmdline)
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
	recipeFile, artifact := legacyRecipe(t, dir, fromParts())
	buildAndResumeLegacy(t, ctx, dir, recipeFile, artifact)
}

// TestGivenDiskBoot boots a disk image the user already has: one made
// beforehand, outside the pipeline, which the recipe names as guest.disk.
// The VMM does not know the kernel's command line; the guest's console
// is whatever the disk's boot loader says.
func TestGivenDiskBoot(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg, err := diskimage.SyslinuxConfig("boot/vmlinuz", "boot/initrd", legacyCmdline)
	if err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, "mine.img")
	if err := diskimage.NewSyslinux(ctx, image, diskimage.SyslinuxSpec{Size: 128 << 20, Label: "MINE", Config: cfg,
		Files: []diskimage.File{{Name: "boot/vmlinuz", Path: os.Getenv(envKernel)}, {Name: "boot/initrd", Path: os.Getenv(envInitrd)}}}); err != nil {
		t.Fatal(err)
	}
	before := fileDigest(t, image)
	recipeFile, artifact := legacyRecipe(t, dir, "  disk: "+image)
	buildAndResumeLegacy(t, ctx, dir, recipeFile, artifact)
	// The build booted a copy: the user's image is as it was.
	if after := fileDigest(t, image); after != before {
		t.Errorf("the build changed the recipe's disk image: %s, then %s", before, after)
	}
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// buildAndResumeLegacy builds a firmware-boot recipe, checks the boot
// chain in its console logs, resumes it on the minimal profile and checks
// the guest there.
func buildAndResumeLegacy(t *testing.T, ctx context.Context, dir, recipeFile, artifact string) {
	t.Helper()
	_, progress, status, err := bunkerbuild(ctx, "build", recipeFile)
	t.Logf("bunkerbuild build:\n%s", progress)
	if err != nil || status != 0 {
		t.Fatalf("bunkerbuild build: status %d, %v", status, err)
	}

	// The boot chain, from the build's console logs: the firmware and
	// the boot loader on the serial port, in order; then, on hvc0 (the
	// guest's /dev/console), the initramfs's banner and the guest tool's
	// facts: the kernel it runs on, both CPUs, ready. Which log holds
	// which console depends on what the VMM knew of the command line.
	var logs [][]byte
	for _, suffix := range []string{pipeline.ConsoleLogSuffix, pipeline.OtherConsoleLogSuffix} {
		b, err := os.ReadFile(artifact + suffix)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		logs = append(logs, b)
	}
	for _, seq := range [][]string{
		{"SeaBIOS (version", "Booting from Hard Disk", "SYSLINUX 6."},
		{"Welcome to u-root", "cpus=2", "kernel_release=", "BUNKERGUEST-READY"},
	} {
		if !inOrderInOne(logs, seq) {
			t.Fatalf("no console log shows %q in order:\n%s\n----\n%s", seq, logs[0], logs[1])
		}
	}

	s := resumeArtifact(t, ctx, artifact, resume.Options{}, nil)

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
	if got := run(t, ctx, s, "cat /boot/syslinux/syslinux.cfg"); !strings.Contains(got, "vmlinuz") {
		t.Errorf("the boot loader's configuration on the disk: %q, want it to name the kernel", got)
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

// inOrderInOne reports whether one of logs holds every string of seq, in
// order.
func inOrderInOne(logs [][]byte, seq []string) bool {
	for _, l := range logs {
		at, ok := 0, true
		for _, want := range seq {
			i := bytes.Index(l[at:], []byte(want))
			if i < 0 {
				ok = false
				break
			}
			at += i + len(want)
		}
		if ok {
			return true
		}
	}
	return false
}
