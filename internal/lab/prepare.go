package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
)

// Prepare makes the lab ready for Run: it installs QEMU if it is missing
// (on Debian 12 only, from bookworm-backports with apt-get, as root), then
// fetches L1's kernel and builds its initramfs into the cache.
func Prepare(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := checkPlatform(); err != nil {
		return fmt.Errorf("lab: prepare: %w", err)
	}
	if err := installQEMU(ctx, cfg, "/etc/os-release"); err != nil {
		return fmt.Errorf("lab: prepare: %w", err)
	}
	k, err := kernelTree(ctx, cfg)
	if err != nil {
		return fmt.Errorf("lab: prepare: %w", err)
	}
	initrd, err := initramfs(ctx, cfg, k)
	if err != nil {
		return fmt.Errorf("lab: prepare: %w", err)
	}
	cfg.progressf("kernel %s", k.vmlinuz)
	cfg.progressf("initramfs %s", initrd)
	return nil
}

// Available returns nil if Run can work on this machine, or an error that
// says what is missing. It is quick and changes nothing: Run may still need
// to fetch the kernel or build the initramfs.
func Available(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := checkPlatform(); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return fmt.Errorf("lab: QEMU not installed (run `bunkerlab prepare`): %w", err)
	}
	if _, err := goCommand(); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

func checkPlatform() error {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return fmt.Errorf("the lab needs linux/amd64, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	return nil
}

// installQEMU installs QEMU from bookworm-backports unless cfg.QEMU is
// found. osRelease is the system's os-release file.
func installQEMU(ctx context.Context, cfg Config, osRelease string) error {
	if p, err := exec.LookPath(cfg.QEMU); err == nil {
		cfg.progressf("QEMU: %s", qemuVersion(ctx, p))
		return nil
	}
	if cfg.QEMU != DefaultQEMU {
		return fmt.Errorf("QEMU %s not found", cfg.QEMU)
	}
	codename, err := osCodename(osRelease)
	if err != nil {
		return fmt.Errorf("install QEMU: %w", err)
	}
	if codename != "bookworm" {
		return fmt.Errorf("install QEMU: prepare installs it on Debian 12 (bookworm) only, this is %q: install QEMU 10 (qemu-system-x86_64) yourself", codename)
	}
	if os.Geteuid() != 0 {
		return errors.New("install QEMU: apt-get needs root: run prepare as root")
	}
	if err := guestimage.EnsureBackports(ctx, cfg.progressWriter()); err != nil {
		return fmt.Errorf("install QEMU: %w", err)
	}
	cfg.progressf("installing QEMU from bookworm-backports")
	install := func() error {
		return cfg.runLogged(ctx, "apt-get", "install", "-y", "--no-install-recommends",
			"-t", "bookworm-backports", "qemu-system-x86")
	}
	if err := install(); err != nil {
		// Stale package lists name packages the mirror dropped.
		cfg.progressf("%v; refreshing package lists and retrying", err)
		if err := cfg.runLogged(ctx, "apt-get", "update"); err != nil {
			return fmt.Errorf("install QEMU: %w", err)
		}
		if err := install(); err != nil {
			return fmt.Errorf("install QEMU: %w", err)
		}
	}
	p, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return fmt.Errorf("install QEMU: installed qemu-system-x86 but: %w", err)
	}
	cfg.progressf("QEMU: %s", qemuVersion(ctx, p))
	return nil
}

// osCodename returns VERSION_CODENAME from an os-release file.
func osCodename(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read os-release: %w", err)
	}
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VERSION_CODENAME="); ok {
			return strings.Trim(v, `"'`), nil
		}
	}
	return "", fmt.Errorf("read os-release: no VERSION_CODENAME in %s", path)
}

func qemuVersion(ctx context.Context, qemu string) string {
	out, err := exec.CommandContext(ctx, qemu, "--version").Output()
	if err != nil {
		return fmt.Sprintf("%s (version unknown: %v)", qemu, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return fmt.Sprintf("%s (%s)", qemu, first)
}

// runLogged runs a command with its output going to Progress.
func (cfg Config) runLogged(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = cfg.progressWriter(), cfg.progressWriter()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(cmd.Args, " "), err)
	}
	return nil
}
