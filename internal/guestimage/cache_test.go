package guestimage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDefaultCacheDir(t *testing.T) {
	tests := []struct {
		name, cache, xdg, home, want string
	}{
		{name: "override", cache: "/srv/bb", xdg: "/x", home: "/h", want: "/srv/bb"},
		{name: "xdg", xdg: "/x", home: "/h", want: "/x/bunkerbuild"},
		{name: "home", home: "/h", want: "/h/.cache/bunkerbuild"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(CacheEnv, tt.cache)
			t.Setenv("XDG_CACHE_HOME", tt.xdg)
			t.Setenv("HOME", tt.home)
			if got := DefaultCacheDir(); got != tt.want {
				t.Errorf("DefaultCacheDir() = %q; want %q", got, tt.want)
			}
		})
	}
}

func TestInstallOnce(t *testing.T) {
	errBuild := errors.New("build failed")
	writeFile := func(tmp string) error { return os.WriteFile(tmp, []byte("new"), 0o644) }
	tests := []struct {
		name     string
		existing string // content of final before the call, if any
		build    func(tmp string) error
		wantErr  error
		want     string // content of final after the call, "" if absent
	}{
		{name: "file", build: writeFile, want: "new"},
		{
			name: "directory",
			build: func(tmp string) error {
				if err := os.MkdirAll(filepath.Join(tmp, "boot"), 0o755); err != nil {
					return err
				}
				return os.WriteFile(filepath.Join(tmp, "boot", "f"), []byte("tree"), 0o644)
			},
			want: "tree",
		},
		{name: "cached", existing: "old", build: writeFile, want: "old"},
		{
			name: "failed build leaves nothing",
			build: func(tmp string) error {
				if err := os.WriteFile(tmp, []byte("half"), 0o644); err != nil {
					return err
				}
				return errBuild
			},
			wantErr: errBuild,
		},
		{name: "build made nothing", build: func(string) error { return nil }, wantErr: os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache", "sub")
			final := filepath.Join(dir, "artifact")
			if tt.existing != "" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(final, []byte(tt.existing), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := installOnce(final, tt.build)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("installOnce() = %v; want %v", err, tt.wantErr)
			}
			if got := readArtifact(t, final); got != tt.want {
				t.Errorf("after installOnce(), final holds %q; want %q", got, tt.want)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if e.Name() != "artifact" {
					t.Errorf("installOnce() left %s behind", e.Name())
				}
			}
		})
	}
}

// readArtifact returns the content of file final, or of final/boot/f if it is
// a directory, or "" if it does not exist.
func readArtifact(t *testing.T, final string) string {
	t.Helper()
	fi, err := os.Stat(final)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if fi.IsDir() {
		final = filepath.Join(final, "boot", "f")
	}
	b, err := os.ReadFile(final)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInstallOnceLosesRace(t *testing.T) {
	final := filepath.Join(t.TempDir(), "tree")
	err := installOnce(final, func(tmp string) error {
		// Another process installs the same tree while we build.
		if err := os.MkdirAll(filepath.Join(final, "boot"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(final, "boot", "f"), []byte("theirs"), 0o644); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(tmp, "boot"), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, "boot", "f"), []byte("ours"), 0o644)
	})
	if err != nil {
		t.Fatalf("installOnce() = %v; want the other install to count", err)
	}
	if got := readArtifact(t, final); got != "theirs" {
		t.Errorf("final holds %q; want the first install's %q", got, "theirs")
	}
}

func TestCommandError(t *testing.T) {
	err := command(context.Background(), "", nil, nil, "sh", "-c", "echo doing; echo E: no such package >&2; exit 100")
	if err == nil {
		t.Fatal("command() = nil; want an error")
	}
	want := "sh -c echo doing; echo E: no such package >&2; exit 100: exit status 100: E: no such package"
	if err.Error() != want {
		t.Errorf("command() = %q; want %q", err, want)
	}
}

func TestCommandCancelKillsGroup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The grandchild holds stderr open: unless it is killed too, the
	// command does not return before it exits.
	err := command(ctx, "", nil, nil, "sh", "-c", "sleep 30 & wait")
	if err == nil {
		t.Fatal("command() = nil; want an error")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("command() returned after %v; want soon after cancellation", d)
	}
}
