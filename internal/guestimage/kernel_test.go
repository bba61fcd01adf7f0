package guestimage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKernelDepends(t *testing.T) {
	tests := []struct {
		depends      string
		pkg, version string
		wantErr      bool
	}{
		{
			depends: "linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)",
			pkg:     "linux-image-6.12.95+deb12-amd64", version: "6.12.95-1~bpo12+1",
		},
		{
			depends: "linux-image-6.1.0-30-amd64 (= 6.1.124-1)",
			pkg:     "linux-image-6.1.0-30-amd64", version: "6.1.124-1",
		},
		{
			depends: "initramfs-tools | linux-initramfs-tool, linux-image-6.12.9+bpo-amd64 (=6.12.9-1~bpo12+1), kmod",
			pkg:     "linux-image-6.12.9+bpo-amd64", version: "6.12.9-1~bpo12+1",
		},
		{
			depends: "foo | linux-image-6.12.1-amd64 (= 1:6.12.1-1)",
			pkg:     "linux-image-6.12.1-amd64", version: "1:6.12.1-1",
		},
		{depends: "", wantErr: true},
		{depends: "linux-image-6.12.95+deb12-amd64", wantErr: true},           // no exact version
		{depends: "linux-image-6.12.95+deb12-amd64 (>= 6.12)", wantErr: true}, // not exact
		{depends: "linux-image-amd64-signed-template (= 1)", wantErr: true},   // not a kernel
		{depends: "linux-headers-6.12.95+deb12-amd64 (= 6.12.95-1)", wantErr: true},
	}
	for _, tt := range tests {
		pkg, version, err := parseKernelDepends(tt.depends)
		if (err != nil) != tt.wantErr || pkg != tt.pkg || version != tt.version {
			t.Errorf("parseKernelDepends(%q) = %q, %q, %v; want %q, %q, error %v",
				tt.depends, pkg, version, err, tt.pkg, tt.version, tt.wantErr)
		}
	}
}

func TestControlField(t *testing.T) {
	const show = `Package: linux-image-amd64
Source: linux-signed-amd64 (6.12.95+1~bpo12+1)
Version: 6.12.95-1~bpo12+1
Depends: linux-image-6.12.95+deb12-amd64
 (= 6.12.95-1~bpo12+1)
Description-en: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel.

Package: linux-image-amd64
Version: 6.1.0-1
Depends: linux-image-6.1.0-1-amd64 (= 6.1.0-1)
`
	tests := []struct {
		field, want string
		wantErr     bool
	}{
		{field: "Version", want: "6.12.95-1~bpo12+1"},
		{field: "depends", want: "linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)"},
		{field: "Description-en", want: "Linux for 64-bit PCs (meta-package) This package depends on the latest Linux kernel."},
		{field: "Recommends", wantErr: true}, // not in the first stanza
	}
	for _, tt := range tests {
		got, err := controlField([]byte(show), tt.field)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("controlField(%q) = %q, %v; want %q, error %v", tt.field, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSourcesName(t *testing.T) {
	tests := []struct {
		name, sources string
		want          bool
	}{
		{"deb822", backportsDeb822, true},
		{"deb822 lower case", "types: deb\nsuites: bookworm bookworm-backports\n", true},
		{"one-line", "deb http://deb.debian.org/debian bookworm-backports main\n", true},
		{"one-line options", "deb [signed-by=/k.gpg] http://deb.debian.org/debian bookworm-backports main contrib\n", true},
		{"other suites", "Types: deb\nSuites: bookworm bookworm-updates\n", false},
		{"commented", "# deb http://deb.debian.org/debian bookworm-backports main\n", false},
		{"deb-src only", "deb-src http://deb.debian.org/debian bookworm-backports main\n", false},
		{"in a URI", "deb http://example.org/bookworm-backports bookworm main\n", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		if got := sourcesName([]byte(tt.sources), backportsSuite); got != tt.want {
			t.Errorf("%s: sourcesName() = %v; want %v", tt.name, got, tt.want)
		}
	}
}

// writeFakeKernel lays out what dpkg -x makes of a kernel package, with a
// vmlinuz that starts with header.
func writeFakeKernel(t *testing.T, root, release string, header []byte, modulesDir string) {
	t.Helper()
	image := filepath.Join(root, "boot", "vmlinuz-"+release)
	if err := os.MkdirAll(filepath.Dir(image), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(image, header, 0o644); err != nil {
		t.Fatal(err)
	}
	if modulesDir != "" {
		if err := os.MkdirAll(filepath.Join(root, modulesDir, release), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func bzHeader() []byte {
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	return b
}

func TestLoadKernelTree(t *testing.T) {
	const release = "6.12.95+deb12-amd64"
	tests := []struct {
		name       string
		header     []byte
		modulesDir string
		wantErr    string
	}{
		{name: "lib/modules", header: bzHeader(), modulesDir: "lib/modules"},
		{name: "usr/lib/modules", header: bzHeader(), modulesDir: "usr/lib/modules"},
		{name: "no modules", header: bzHeader(), wantErr: "no lib/modules"},
		{name: "not a bzImage", header: make([]byte, 0x400), modulesDir: "lib/modules", wantErr: "not a bzImage"},
		{name: "truncated", header: []byte("MZ"), modulesDir: "lib/modules", wantErr: "setup header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeFakeKernel(t, root, release, tt.header, tt.modulesDir)
			got, err := loadKernelTree(root)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("loadKernelTree() error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := KernelTree{
				Root:       root,
				Version:    release,
				Vmlinuz:    filepath.Join(root, "boot", "vmlinuz-"+release),
				ModulesDir: filepath.Join(root, tt.modulesDir, release),
			}
			if got != want {
				t.Errorf("loadKernelTree() = %+v; want %+v", got, want)
			}
		})
	}
}

func TestLoadKernelTreeTwoImages(t *testing.T) {
	root := t.TempDir()
	writeFakeKernel(t, root, "6.1.0-1-amd64", bzHeader(), "lib/modules")
	writeFakeKernel(t, root, "6.12.0-1-amd64", bzHeader(), "lib/modules")
	if _, err := loadKernelTree(root); err == nil {
		t.Error("loadKernelTree() with two vmlinuz images succeeded")
	}
}

func TestUnpackPackageError(t *testing.T) {
	const spec = "bunkerbuild-no-such-package=1.0"
	err := unpackPackage(context.Background(), t.TempDir(), spec, nil)
	if !errors.Is(err, errDownload) {
		t.Fatalf("unpackPackage(%s) = %v; want a download error", spec, err)
	}
	want := "download kernel package: apt-get download " + spec + ": exit status 100: "
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("unpackPackage(%s) = %q; want it to start with %q", spec, err, want)
	}
}
