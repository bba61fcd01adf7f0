// Package guestimage builds and caches bunkerbuild's default guest: the stock
// Debian bookworm-backports kernel and a u-root initramfs that carries our
// guest tool, bunkerguest.
//
// Artifacts live in a cache directory outside the repository (see
// [DefaultCacheDir]). Each is keyed by its exact inputs, built at most once,
// and installed atomically: a path returned by this package never names a
// half-written file.
package guestimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CacheEnv names the environment variable that overrides [DefaultCacheDir].
const CacheEnv = "BUNKERBUILD_CACHE"

// DefaultCacheDir returns $BUNKERBUILD_CACHE if set, else "bunkerbuild" under
// the user's cache directory ($XDG_CACHE_HOME or ~/.cache). Without either it
// falls back to a directory under os.TempDir.
func DefaultCacheDir() string {
	if dir := os.Getenv(CacheEnv); dir != "" {
		return dir
	}
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "bunkerbuild")
	}
	return filepath.Join(os.TempDir(), "bunkerbuild-cache")
}

// installOnce makes sure final exists. If it does not, build is called with a
// temporary path in the same directory, and whatever build creates there (a
// file or a directory tree) is flushed to disk and renamed to final. If build
// fails, the temporary path is removed and final is left untouched. If
// another process installs final first, its copy is kept.
func installOnce(final string, build func(tmp string) error) error {
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-"+filepath.Base(final)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	staged := filepath.Join(tmp, filepath.Base(final))
	if err := build(staged); err != nil {
		return err
	}
	if _, err := os.Lstat(staged); err != nil {
		return fmt.Errorf("build created nothing: %w", err)
	}
	if err := syncFS(staged); err != nil {
		return err
	}
	if err := os.Rename(staged, final); err != nil {
		// Renaming a directory onto a non-empty one fails: another
		// process finished the same install first.
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return nil
		}
		return err
	}
	return syncFS(dir)
}

// syncFS flushes the file system holding path, so that a rename done next
// cannot be persisted ahead of the data it publishes.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}

// command runs name with args in dir (if not empty), with env added to the
// process environment. Its stdout and stderr are copied to progress. A failure
// is reported as "name args...: exit status N: <end of stderr>".
func command(ctx context.Context, dir string, env []string, progress io.Writer, name string, args ...string) error {
	return runCmd(ctx, dir, env, progress, progress, name, args...)
}

// output is like command but returns the standard output instead of copying
// it to progress.
func output(ctx context.Context, dir string, env []string, progress io.Writer, name string, args ...string) ([]byte, error) {
	var stdout bytes.Buffer
	err := runCmd(ctx, dir, env, &stdout, progress, name, args...)
	return stdout.Bytes(), err
}

func runCmd(ctx context.Context, dir string, env []string, stdout, progress io.Writer, name string, args ...string) error {
	progress = orDiscard(progress)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout = stdout
	cmd.Stderr = io.MultiWriter(progress, &stderr)
	// Kill the whole process group on cancellation: go and u-root
	// start compilers of their own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w%s", strings.Join(cmd.Args, " "), err, tail(stderr.Bytes()))
	}
	return nil
}

// tail returns ": " and the last few lines of b, or "" if b is blank.
func tail(b []byte) string {
	const maxLines, maxBytes = 5, 1000
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	s := strings.Join(lines, "\n")
	if len(s) > maxBytes {
		s = "..." + s[len(s)-maxBytes:]
	}
	if s == "" {
		return ""
	}
	return ": " + s
}
