package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

const (
	backportsSuite = "bookworm-backports"
	kernelMeta     = "linux-image-amd64"

	// BackportsSources is the apt source file that EnsureBackports adds.
	BackportsSources = "/etc/apt/sources.list.d/bookworm-backports.sources"

	backportsDeb822 = `Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`
)

// KernelTree is an unpacked Debian kernel package (dpkg -x), cached under
// <cacheDir>/kernel/<Package>_<PackageVersion>.
type KernelTree struct {
	Package        string // Debian package, e.g. linux-image-6.12.95+deb12-amd64
	PackageVersion string // its exact version, e.g. 6.12.95-1~bpo12+1
	Version        string // kernel release as uname -r prints it, e.g. 6.12.95+deb12-amd64
	Root           string // the unpacked package
	Vmlinuz        string // the bzImage, Root/boot/vmlinuz-<Version>
	// ModulesDir is Root/lib/modules/<Version>. Its modules are
	// xz-compressed (.ko.xz) and it has no modules.dep: the package's
	// postinst runs depmod, dpkg -x does not.
	ModulesDir string
}

// Kernel returns the path of the stock Debian bookworm-backports kernel
// bzImage, downloading and caching it if needed. See FetchKernel.
func Kernel(ctx context.Context, cacheDir string, progress io.Writer) (string, error) {
	t, err := FetchKernel(ctx, cacheDir, progress)
	if err != nil {
		return "", err
	}
	return t.Vmlinuz, nil
}

// FetchKernel returns the unpacked kernel package that bookworm-backports'
// linux-image-amd64 depends on. The exact package version is the cache key:
// once unpacked, it is not downloaded again. It needs the apt source for
// bookworm-backports and adds it if missing (see EnsureBackports). Progress
// messages and the output of apt go to progress, which may be nil.
func FetchKernel(ctx context.Context, cacheDir string, progress io.Writer) (KernelTree, error) {
	progress = orDiscard(progress)
	if err := EnsureBackports(ctx, progress); err != nil {
		return KernelTree{}, err
	}
	t, err := fetchKernel(ctx, cacheDir, progress)
	if errors.Is(err, errDownload) {
		// The mirror drops superseded versions, so stale package
		// lists name a package that is gone.
		fmt.Fprintf(progress, "guestimage: %v\nguestimage: refreshing package lists and retrying\n", err)
		if uerr := aptUpdate(ctx, progress); uerr != nil {
			return KernelTree{}, errors.Join(err, uerr)
		}
		t, err = fetchKernel(ctx, cacheDir, progress)
	}
	return t, err
}

var errDownload = errors.New("download kernel package")

func fetchKernel(ctx context.Context, cacheDir string, progress io.Writer) (KernelTree, error) {
	pkg, version, err := resolveKernelPackage(ctx, progress)
	if err != nil {
		return KernelTree{}, err
	}
	root := filepath.Join(cacheDir, "kernel", pkg+"_"+version)
	if _, err := os.Stat(root); err != nil {
		fmt.Fprintf(progress, "guestimage: fetching %s=%s\n", pkg, version)
	}
	err = installOnce(root, func(tmp string) error {
		return unpackPackage(ctx, tmp, pkg+"="+version, progress)
	})
	if err != nil {
		return KernelTree{}, fmt.Errorf("install %s=%s in %s: %w", pkg, version, root, err)
	}
	t, err := loadKernelTree(root)
	if err != nil {
		return KernelTree{}, err
	}
	t.Package, t.PackageVersion = pkg, version
	return t, nil
}

// resolveKernelPackage returns the name and exact version of the kernel
// package that linux-image-amd64 in bookworm-backports depends on, as the
// local apt package lists know it.
func resolveKernelPackage(ctx context.Context, progress io.Writer) (pkg, version string, err error) {
	out, err := output(ctx, "", nil, progress, "apt-cache", "show", kernelMeta+"/"+backportsSuite)
	if err != nil {
		return "", "", err
	}
	depends, err := controlField(out, "Depends")
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s/%s: %w", kernelMeta, backportsSuite, err)
	}
	pkg, version, err = parseKernelDepends(depends)
	if err != nil {
		return "", "", fmt.Errorf("%s/%s: %w", kernelMeta, backportsSuite, err)
	}
	return pkg, version, nil
}

// controlField returns the value of field in the first stanza of Debian
// control data, such as apt-cache show prints.
func controlField(control []byte, field string) (string, error) {
	s := bufio.NewScanner(bytes.NewReader(control))
	s.Buffer(nil, 1<<20)
	var value string
	found := false
	for s.Scan() {
		line := s.Text()
		switch {
		case line == "":
			if found {
				return value, nil
			}
		case line[0] == ' ' || line[0] == '\t':
			if found {
				value += " " + strings.TrimSpace(line)
			}
		default:
			if found {
				return value, nil
			}
			name, v, ok := strings.Cut(line, ":")
			if ok && strings.EqualFold(name, field) {
				value, found = strings.TrimSpace(v), true
			}
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("no %s field", field)
	}
	return value, nil
}

var kernelDep = regexp.MustCompile(`^(linux-image-[0-9][^\s(]*)\s*\(\s*=\s*([^\s)]+)\s*\)$`)

// parseKernelDepends finds the versioned kernel package in the Depends field
// of linux-image-amd64, e.g.
// "linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)".
func parseKernelDepends(depends string) (pkg, version string, err error) {
	for _, dep := range strings.Split(depends, ",") {
		for _, alt := range strings.Split(dep, "|") {
			if m := kernelDep.FindStringSubmatch(strings.TrimSpace(alt)); m != nil {
				return m[1], m[2], nil
			}
		}
	}
	return "", "", fmt.Errorf("no linux-image-<version> (= <exact version>) in Depends %q", depends)
}

// unpackPackage downloads the Debian package spec (name=version) with
// apt-get download and unpacks it into dir with dpkg-deb -x.
func unpackPackage(ctx context.Context, dir, spec string, progress io.Writer) error {
	dl, err := os.MkdirTemp("", "bunkerbuild-apt-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dl)
	if err := command(ctx, dl, nil, progress, "apt-get", "download", spec); err != nil {
		return fmt.Errorf("%w: %w", errDownload, err)
	}
	debs, err := filepath.Glob(filepath.Join(dl, "*.deb"))
	if err != nil {
		return err
	}
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s: want one .deb, got %q", spec, debs)
	}
	return command(ctx, "", nil, progress, "dpkg-deb", "-x", debs[0], dir)
}

// loadKernelTree describes an unpacked kernel package.
func loadKernelTree(root string) (KernelTree, error) {
	images, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return KernelTree{}, err
	}
	if len(images) != 1 {
		return KernelTree{}, fmt.Errorf("%s: want one boot/vmlinuz-*, found %d", root, len(images))
	}
	t := KernelTree{
		Root:    root,
		Vmlinuz: images[0],
		Version: strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-"),
	}
	if err := checkBzImage(t.Vmlinuz); err != nil {
		return KernelTree{}, err
	}
	for _, dir := range []string{"lib/modules", "usr/lib/modules"} {
		d := filepath.Join(root, dir, t.Version)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			t.ModulesDir = d
			return t, nil
		}
	}
	return KernelTree{}, fmt.Errorf("%s: no lib/modules/%s", root, t.Version)
}

// checkBzImage reports whether path is an x86 bzImage: a Linux boot protocol
// setup header ("HdrS" at offset 0x202).
func checkBzImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0x202); err != nil {
		return fmt.Errorf("%s: read setup header: %w", path, err)
	}
	if string(magic) != "HdrS" {
		return fmt.Errorf("%s: not a bzImage: %q at 0x202, want \"HdrS\"", path, magic)
	}
	return nil
}

// EnsureBackports makes sure apt can install from bookworm-backports: it adds
// BackportsSources if no apt source names the suite, and runs apt-get update
// if the suite's package lists have not been fetched yet. It needs root for
// either.
func EnsureBackports(ctx context.Context, progress io.Writer) error {
	progress = orDiscard(progress)
	configured, err := aptSuiteConfigured(backportsSuite)
	if err != nil {
		return err
	}
	if !configured {
		fmt.Fprintf(progress, "guestimage: adding apt source %s\n", BackportsSources)
		err := installOnce(BackportsSources, func(tmp string) error {
			return os.WriteFile(tmp, []byte(backportsDeb822), 0o644)
		})
		if err != nil {
			return fmt.Errorf("add apt source %s: %w", BackportsSources, err)
		}
	}
	lists, err := filepath.Glob("/var/lib/apt/lists/*_dists_" + backportsSuite + "_*Packages*")
	if err != nil {
		return err
	}
	if configured && len(lists) > 0 {
		return nil
	}
	return aptUpdate(ctx, progress)
}

func aptUpdate(ctx context.Context, progress io.Writer) error {
	return command(ctx, "", nil, progress, "apt-get", "update")
}

// aptSuiteConfigured reports whether any apt source file names suite.
func aptSuiteConfigured(suite string) (bool, error) {
	files, err := filepath.Glob("/etc/apt/sources.list.d/*")
	if err != nil {
		return false, err
	}
	for _, name := range append([]string{"/etc/apt/sources.list"}, files...) {
		if !strings.HasSuffix(name, ".list") && !strings.HasSuffix(name, ".sources") {
			continue
		}
		data, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		if sourcesName(data, suite) {
			return true, nil
		}
	}
	return false, nil
}

// sourcesName reports whether apt sources (one-line .list or deb822 .sources
// format) name suite outside comments.
func sourcesName(data []byte, suite string) bool {
	for line := range strings.Lines(string(data)) {
		line, _, _ = strings.Cut(line, "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		// Only the Suites field of a deb822 stanza, or a one-line
		// "deb [options] uri suite components" entry, names a suite.
		if !strings.EqualFold(fields[0], "Suites:") && fields[0] != "deb" {
			continue
		}
		for _, f := range fields[1:] {
			if f == suite {
				return true
			}
		}
	}
	return false
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
