package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/lab/labproto"
)

func TestExitCode(t *testing.T) {
	tests := []struct {
		st   labproto.Status
		want int
	}{
		{labproto.Status{Kind: labproto.Exit, Code: 0}, 0},
		{labproto.Status{Kind: labproto.Exit, Code: 7}, 7},
		{labproto.Status{Kind: labproto.Signal, Code: 9}, 137},
	}
	for _, tt := range tests {
		if got := exitCode(tt.st); got != tt.want {
			t.Errorf("exitCode(%+v) = %d, want %d", tt.st, got, tt.want)
		}
	}
}

func TestWatcherResult(t *testing.T) {
	ready := labproto.Status{Kind: labproto.Ready, Detail: "kvm ok"}
	exit3 := labproto.Status{Kind: labproto.Exit, Code: 3}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		statuses []labproto.Status
		failure  error
		want     labproto.Status
		wantErr  string
	}{
		{name: "exit", statuses: []labproto.Status{ready, exit3}, want: exit3},
		{name: "first final status wins", statuses: []labproto.Status{ready, exit3, {Kind: labproto.Exit, Code: 0}}, want: exit3},
		{name: "init failed", statuses: []labproto.Status{{Kind: labproto.Fail, Detail: "mount 9p: no such device"}},
			wantErr: "L1 init failed: mount 9p: no such device; end of the console:\nboot\nconsole line"},
		{name: "command failed to start", statuses: []labproto.Status{ready, {Kind: labproto.Fail, Detail: "start x: no such file"}},
			wantErr: "L1 init: start x: no such file"},
		{name: "no status", wantErr: "L1 stopped before it was ready (qemu: exit status 1); end of the console:\nboot\nconsole line"},
		{name: "stopped after ready", statuses: []labproto.Status{ready}, wantErr: "L1 stopped before the command finished"},
		{name: "boot timeout", failure: errors.New("L1 did not report ready within 1s"), wantErr: "L1 did not report ready within 1s; end of the console"},
		{name: "canceled", ctx: canceled, statuses: []labproto.Status{ready, exit3}, wantErr: "context canceled"},
	}
	for _, tt := range tests {
		w := watcher{start: time.Now(), failure: tt.failure}
		for _, st := range tt.statuses {
			w.observe(st)
		}
		ctx := tt.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		got, err := w.result(ctx, errors.New("exit status 1"), "boot\nconsole line\n")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error = %v, want %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: result = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}

func TestConsoleTail(t *testing.T) {
	var lines []string
	for i := range 40 {
		lines = append(lines, strings.Repeat("x", i))
	}
	got := consoleTail(strings.Join(lines, "\n") + "\n")
	if want := "; end of the console:\n" + strings.Join(lines[15:], "\n"); got != want {
		t.Errorf("consoleTail = %q, want %q", got, want)
	}
	if got := consoleTail(" \n"); got != "; the console was empty" {
		t.Errorf("consoleTail(blank) = %q", got)
	}
	// A kernel's failure report is quoted from its first line, within
	// 80 lines of the end; an older one is not.
	oops := append([]string{"[ 1.0] BUG: kernel NULL pointer dereference, address: 0"}, lines...)
	got = consoleTail(strings.Join(oops, "\n"))
	if want := "; end of the console:\n" + strings.Join(oops, "\n"); got != want {
		t.Errorf("consoleTail(oops) = %q, want %q", got, want)
	}
	old := append(append([]string{"[ 1.0] Oops: 0000"}, lines...), lines...)
	got = consoleTail(strings.Join(old, "\n"))
	if want := "; end of the console:\n" + strings.Join(lines[15:], "\n"); got != want {
		t.Errorf("consoleTail(old oops) = %q, want %q", got, want)
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 5}
	for _, s := range []string{"ab", "cdef", "g"} {
		b.Write([]byte(s))
	}
	if got := b.String(); got != "cdefg" {
		t.Errorf("tailBuffer = %q, want %q", got, "cdefg")
	}
}

func TestOSCodename(t *testing.T) {
	tests := []struct {
		content, want string
		wantErr       bool
	}{
		{content: "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n", want: "bookworm"},
		{content: "VERSION_CODENAME=\"trixie\"\n", want: "trixie"},
		{content: "ID=alpine\n", wantErr: true},
	}
	for _, tt := range tests {
		path := filepath.Join(t.TempDir(), "os-release")
		if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := osCodename(path)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("osCodename(%q) = %q, %v; want %q, error %t", tt.content, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSourceFiles(t *testing.T) {
	files, err := sourceFiles()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"l1init/main.go", "labproto/labproto.go"} {
		if len(files[name]) == 0 {
			t.Errorf("embedded sources lack %s", name)
		}
	}
	for name := range files {
		if strings.HasSuffix(name, "_test.go") {
			t.Errorf("embedded sources include test file %s", name)
		}
	}
}

func TestInitramfsKey(t *testing.T) {
	src := map[string][]byte{"l1init/main.go": []byte("package main")}
	base := initramfsKey(src, "6.12.95", "go1.26.8")
	if again := initramfsKey(map[string][]byte{"l1init/main.go": []byte("package main")}, "6.12.95", "go1.26.8"); again != base {
		t.Errorf("same inputs, different keys %s and %s", base, again)
	}
	for name, key := range map[string]string{
		"source": initramfsKey(map[string][]byte{"l1init/main.go": []byte("package main ")}, "6.12.95", "go1.26.8"),
		"file":   initramfsKey(map[string][]byte{"l1init/init.go": []byte("package main")}, "6.12.95", "go1.26.8"),
		"kernel": initramfsKey(src, "6.12.96", "go1.26.8"),
		"go":     initramfsKey(src, "6.12.95", "go1.26.9"),
	} {
		if key == base {
			t.Errorf("changing the %s leaves the key %s", name, key)
		}
	}
}
