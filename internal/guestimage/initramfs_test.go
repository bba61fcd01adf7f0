package guestimage

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
	"github.com/u-root/u-root/pkg/cpio"
)

func TestInitramfsKey(t *testing.T) {
	base := func() initramfsInputs {
		o := defaultOptions
		o.Commands = slices.Clone(o.Commands)
		o.Tags = slices.Clone(o.Tags)
		o.GuestBuildFlags = slices.Clone(o.GuestBuildFlags)
		o.Modules = slices.Clone(o.Modules)
		return initramfsInputs{
			Format:  keyFormat,
			URoot:   "github.com/u-root/u-root v0.16.0 h1:abc=",
			GoEnv:   "go1.26.8\nlinux\namd64\nv1\n\n\n",
			Options: o,
			Guest: []string{
				"file cmd/bunkerguest/main.go 0a0a",
				"module golang.org/x/sys v0.50.0",
			},
			Kernel:  "6.12.95+deb12-amd64",
			Modules: []string{"lib/modules/6.12.95+deb12-amd64/msr.ko.xz 0a0a"},
		}
	}
	tests := []struct {
		name   string
		change func(*initramfsInputs)
	}{
		{"format", func(in *initramfsInputs) { in.Format++ }},
		{"u-root version", func(in *initramfsInputs) { in.URoot = "github.com/u-root/u-root v0.17.0 h1:abc=" }},
		{"u-root checksum", func(in *initramfsInputs) { in.URoot = "github.com/u-root/u-root v0.16.0 h1:abd=" }},
		{"go version", func(in *initramfsInputs) { in.GoEnv = strings.Replace(in.GoEnv, "go1.26.8", "go1.26.9", 1) }},
		{"GOAMD64", func(in *initramfsInputs) { in.GoEnv = strings.Replace(in.GoEnv, "v1", "v3", 1) }},
		{"guest source", func(in *initramfsInputs) { in.Guest[0] = "file cmd/bunkerguest/main.go 0a0b" }},
		{"guest file added", func(in *initramfsInputs) { in.Guest = append(in.Guest, "file cmd/bunkerguest/x.go 01") }},
		{"guest dependency", func(in *initramfsInputs) { in.Guest[1] = "module golang.org/x/sys v0.51.0" }},
		{"GOARCH", func(in *initramfsInputs) { in.Options.GOARCH = "arm64" }},
		{"commands", func(in *initramfsInputs) { in.Options.Commands = append(in.Options.Commands, "x/cmds/y") }},
		{"tags", func(in *initramfsInputs) { in.Options.Tags = nil }},
		{"init", func(in *initramfsInputs) { in.Options.Init = "sluinit" }},
		{"shell", func(in *initramfsInputs) { in.Options.Shell = "elvish" }},
		{"uinit", func(in *initramfsInputs) { in.Options.Uinit = "/bin/bunkerguest poweroff" }},
		{"guest path", func(in *initramfsInputs) { in.Options.Guest = "bbin/bunkerguest" }},
		{"guest build flags", func(in *initramfsInputs) { in.Options.GuestBuildFlags = []string{"-trimpath"} }},
		{"modules option", func(in *initramfsInputs) { in.Options.Modules = nil }},
		{"kernel release", func(in *initramfsInputs) { in.Kernel = "6.12.96+deb12-amd64" }},
		{"module checksum", func(in *initramfsInputs) {
			in.Modules[0] = "lib/modules/6.12.95+deb12-amd64/msr.ko.xz 0a0b"
		}},
	}
	baseKey := base().key()
	if again := base().key(); again != baseKey {
		t.Fatalf("key() of equal inputs differs: %s, %s", baseKey, again)
	}
	seen := map[string]string{baseKey: "base"}
	for _, tt := range tests {
		in := base()
		tt.change(&in)
		k := in.key()
		if other, ok := seen[k]; ok {
			t.Errorf("changing %s gives the same key as %s", tt.name, other)
		}
		seen[k] = tt.name
	}
}

func TestSourceInputs(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/m\n\ngo 1.22\n")
	write("cmd/tool/main.go", "package main\n\nimport \"example.com/m/lib\"\n\nfunc main() { lib.F() }\n")
	write("cmd/tool/main_test.go", "package main\n")
	write("lib/lib.go", "package lib\n\nfunc F() {}\n")
	env := defaultOptions.env()

	first, err := sourceInputs(ctx, src, "./cmd/tool", env, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range first {
		f := strings.Fields(line)
		names = append(names, f[0]+" "+f[1])
	}
	if want := []string{"file cmd/tool/main.go", "file lib/lib.go"}; !slices.Equal(names, want) {
		t.Errorf("sourceInputs() = %q; want entries %q", first, want)
	}

	write("lib/lib.go", "package lib\n\nfunc F() { println() }\n")
	second, err := sourceInputs(ctx, src, "./cmd/tool", env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(first, second) {
		t.Errorf("sourceInputs() did not change with a dependency's source: %q", second)
	}
}

func TestGuestSourceInputs(t *testing.T) {
	src, err := sourceRoot()
	if err != nil {
		t.Fatal(err)
	}
	in, err := sourceInputs(context.Background(), src, guestPackage, defaultOptions.env(), nil)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(in, "\n")
	for _, want := range []string{"file cmd/bunkerguest/main.go ", "module golang.org/x/sys v"} {
		if !strings.Contains(joined, want) {
			t.Errorf("inputs of %s lack %q:\n%s", guestPackage, want, joined)
		}
	}
	if strings.Contains(joined, "_test.go") {
		t.Errorf("inputs of %s include test files:\n%s", guestPackage, joined)
	}
}

func TestGoModPath(t *testing.T) {
	tests := []struct{ gomod, want string }{
		{"module github.com/bunkerbuild/bunkerbuild\n\ngo 1.26\n", modulePath},
		{"// comment\nmodule \"example.com/q\" // trailing\n", "example.com/q"},
		{"go 1.26\n", ""},
		{"modulex example.com/m\n", ""},
	}
	for _, tt := range tests {
		if got := goModPath([]byte(tt.gomod)); got != tt.want {
			t.Errorf("goModPath(%q) = %q; want %q", tt.gomod, got, tt.want)
		}
	}
}

func TestFindModuleRoot(t *testing.T) {
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module "+modulePath+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A nested module of another name is skipped.
	if err := os.WriteFile(filepath.Join(root, "a", "go.mod"), []byte("module example.com/other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, ok := findModuleRoot(deep, modulePath); !ok || got != root {
		t.Errorf("findModuleRoot(%s) = %q, %v; want %q", deep, got, ok, root)
	}
	if got, ok := findModuleRoot(deep, "example.com/none"); ok {
		t.Errorf("findModuleRoot(%s, unknown module) = %q; want not found", deep, got)
	}
}

// fakeKernel returns a KernelTree with only a module directory holding
// the modules of the default options, each containing its own path.
func fakeKernel(t *testing.T) KernelTree {
	t.Helper()
	k := KernelTree{Version: "6.12.0-test-amd64"}
	k.ModulesDir = filepath.Join(t.TempDir(), "lib", "modules", k.Version)
	for _, m := range defaultOptions.Modules {
		file := filepath.Join(k.ModulesDir, m)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

func TestModuleFiles(t *testing.T) {
	k := fakeKernel(t)
	files, err := moduleFiles(k, defaultOptions.Modules)
	if err != nil {
		t.Fatal(err)
	}
	var want []imageFile
	for _, m := range defaultOptions.Modules {
		want = append(want, imageFile{Src: filepath.Join(k.ModulesDir, m), Dst: "lib/modules/6.12.0-test-amd64/" + path.Base(m)})
	}
	if want[0].Dst != "lib/modules/6.12.0-test-amd64/msr.ko.xz" || len(want) != 1+len(guestproto.DeviceModules) {
		t.Fatalf("default modules %q: want msr and the device modules", defaultOptions.Modules)
	}
	if !slices.Equal(files, want) {
		t.Errorf("moduleFiles() = %q; want %q", files, want)
	}
	args := defaultOptions.urootArgs("out", "guest", "tmp", files)
	if !slices.Contains(args, want[0].Src+":"+want[0].Dst) {
		t.Errorf("urootArgs() = %q; want -files %s:%s", args, want[0].Src, want[0].Dst)
	}
	if _, err := moduleFiles(k, []string{"kernel/none.ko.xz"}); err == nil {
		t.Error("moduleFiles() with a missing module succeeded")
	}
}

// TestInitramfs really builds the image (a minute or two) and checks what is
// in it. The kernel is a stand-in with only the module files.
func TestInitramfs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds u-root")
	}
	ctx := context.Background()
	cache := t.TempDir()
	src, err := sourceRoot()
	if err != nil {
		t.Fatal(err)
	}
	kernel := fakeKernel(t)
	var log bytes.Buffer
	path, err := buildInitramfs(ctx, cache, src, kernel, defaultOptions, &log)
	if err != nil {
		t.Fatalf("buildInitramfs() = %v\n%s", err, log.String())
	}
	records := readCPIO(t, path)

	msr := "lib/modules/" + kernel.Version + "/msr.ko.xz"
	if r, ok := records[msr]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFREG {
		t.Errorf("no file %s in the image", msr)
	} else if got := readAll(t, r); got != "kernel/arch/x86/kernel/msr.ko.xz" {
		t.Errorf("%s holds %q; want the kernel's module", msr, got)
	}

	for name, target := range map[string]string{
		"init":          "bbin/init",
		"bin/sh":        "../bbin/gosh",
		"bin/uinit":     "bunkerguest",
		"bbin/gosh":     "bb",
		"bbin/poweroff": "bb",
	} {
		r, ok := records[name]
		if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
			t.Errorf("%s is not a symlink in the image", name)
			continue
		}
		if got := readAll(t, r); got != target {
			t.Errorf("%s links to %q; want %q", name, got, target)
		}
	}
	if r, ok := records["etc/uinit.flags"]; !ok {
		t.Error("no etc/uinit.flags")
	} else if got := readAll(t, r); !strings.Contains(got, "uinit") {
		t.Errorf("etc/uinit.flags = %q; want it to pass \"uinit\"", got)
	}

	guest, ok := records["bin/bunkerguest"]
	if !ok || guest.Mode&cpio.S_IFMT != cpio.S_IFREG || guest.Mode&0o111 == 0 {
		t.Fatalf("bin/bunkerguest is not an executable file in the image")
	}
	exe, err := elf.NewFile(guest.ReaderAt)
	if err != nil {
		t.Fatalf("bin/bunkerguest: %v", err)
	}
	if exe.Machine != elf.EM_X86_64 {
		t.Errorf("bin/bunkerguest is for %v; want %v", exe.Machine, elf.EM_X86_64)
	}
	for _, p := range exe.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("bin/bunkerguest is dynamically linked")
		}
	}

	// Same inputs: the cached image, without a rebuild.
	start := time.Now()
	again, err := buildInitramfs(ctx, cache, src, kernel, defaultOptions, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again != path {
		t.Errorf("second buildInitramfs() = %s; want the cached %s", again, path)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("second buildInitramfs() took %v; want it served from the cache", d)
	}
}

func readCPIO(t *testing.T, path string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	all, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	records := make(map[string]cpio.Record)
	for _, r := range all {
		records[r.Name] = r
	}
	return records
}

func readAll(t *testing.T, r cpio.Record) string {
	t.Helper()
	b := make([]byte, r.FileSize)
	if _, err := r.ReadAt(b, 0); err != nil && r.FileSize > 0 {
		t.Fatalf("%s: %v", r.Name, err)
	}
	return string(b)
}
