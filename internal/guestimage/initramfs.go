package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
)

const (
	// URootModule and URootVersion name the u-root release that builds
	// the initramfs. Bumping the version rebuilds the image.
	URootModule  = "github.com/u-root/u-root"
	URootVersion = "v0.16.0"

	modulePath   = "github.com/bunkerbuild/bunkerbuild"
	guestPackage = "./cmd/bunkerguest"

	// keyFormat is part of every initramfs cache key; bump it when the way
	// the image is built changes in a way the other inputs do not show.
	keyFormat = 1
)

// buildOptions are the settings an initramfs is built with. All of them are
// part of its cache key.
type buildOptions struct {
	GOOS, GOARCH string
	// Commands are the u-root commands compiled into its busybox.
	Commands []string
	// Tags are Go build tags for the busybox. goshsmall makes the gosh
	// shell read plain lines from the console instead of running a
	// full-screen line editor, which suits a serial line.
	Tags  []string
	Init  string // what /init links to
	Shell string // what /bin/sh and /bin/defaultsh link to
	// Uinit is the command line u-root's init runs (as /bin/uinit)
	// before it starts the shell. A uinit that exits while it holds the
	// console as controlling terminal makes the kernel hang the console
	// up, and the shell's output with it: "bunkerguest uinit" lets go of
	// it first.
	Uinit string
	// Guest is where bunkerguest goes in the image.
	Guest string
	// GuestBuildFlags are the go build flags for bunkerguest.
	GuestBuildFlags []string
	// Modules are modules of the guest kernel to put in the image, as
	// paths relative to its modules directory. Each is copied as shipped
	// (xz-compressed) to lib/modules/<release>/<file name>. u-root's init
	// loads only /lib/modules/*.ko at boot, so these stay unloaded until
	// bunkerguest loads them: the device drivers at boot
	// (guestproto.DeviceModules), msr for "bunkerguest probe".
	Modules []string
}

var defaultOptions = buildOptions{
	GOOS:            "linux",
	GOARCH:          "amd64",
	Commands:        []string{URootModule + "/cmds/core/*"},
	Tags:            []string{"goshsmall"},
	Init:            "init",
	Shell:           "gosh",
	Uinit:           "/bin/bunkerguest uinit",
	Guest:           "bin/bunkerguest",
	GuestBuildFlags: []string{"-trimpath", "-ldflags=-s -w"},
	Modules:         append([]string{"kernel/arch/x86/kernel/msr.ko.xz"}, guestproto.DeviceModules...),
}

// env is the environment for every go command that builds for the guest.
func (o buildOptions) env() []string {
	return []string{"GOOS=" + o.GOOS, "GOARCH=" + o.GOARCH, "CGO_ENABLED=0", "GOWORK=off"}
}

// imageFile is a host file copied into the image at Dst.
type imageFile struct{ Src, Dst string }

// urootArgs are the arguments of the u-root command that writes the archive
// to out, taking the bunkerguest binary from guestBin, adding files and
// using tmpDir for its build.
func (o buildOptions) urootArgs(out, guestBin, tmpDir string, files []imageFile) []string {
	args := []string{
		"-o", out,
		"-tmp-dir", tmpDir,
		"-build", "bb",
		"-initcmd", o.Init,
		"-defaultsh", o.Shell,
		"-uinitcmd", o.Uinit,
		"-files", guestBin + ":" + o.Guest,
		"-skip-ldd", // everything in the image is static
	}
	for _, f := range files {
		args = append(args, "-files", f.Src+":"+f.Dst)
	}
	for _, t := range o.Tags {
		args = append(args, "-go-build-tags", t)
	}
	return append(args, o.Commands...)
}

// initramfsInputs is everything an initramfs is built from.
type initramfsInputs struct {
	Format  int
	URoot   string // module, version and checksum of u-root
	GoEnv   string // go env: Go version and build settings
	Options buildOptions
	Guest   []string // bunkerguest's source files and dependencies
	Kernel  string   // release of the kernel the modules are from
	Modules []string // "<path in the image> <sha256>" of each module
}

// key returns the cache key of the inputs.
func (in initramfsInputs) key() string {
	b, err := json.Marshal(in)
	if err != nil {
		panic(err) // plain strings and slices always marshal
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Initramfs returns the path of the default guest initramfs, building it if
// no image with the same inputs is cached. It is a newc cpio archive made by
// u-root with its core commands in a busybox, u-root's init as /init, the
// gosh shell, and bunkerguest at /bin/bunkerguest. u-root's init runs
// "bunkerguest uinit" (which prints the facts of "bunkerguest info"), then
// starts the gosh shell on the console: with console=ttyS0, a "$ " prompt on
// the serial line that runs the lines typed there.
//
// The image also carries the default kernel's (see FetchKernel) msr module
// at /lib/modules/<release>/msr.ko.xz, unloaded, for "bunkerguest probe".
//
// The cache key hashes the u-root version, bunkerguest's source files and
// dependency versions, the Go version, the build options, the kernel release
// and the checksums of the modules. It must run inside the bunkerbuild source
// tree (or from a binary built there), needs the go command, and fetches
// modules through the Go module proxy. Progress messages and the output of
// the build go to progress, which may be nil.
func Initramfs(ctx context.Context, cacheDir string, progress io.Writer) (string, error) {
	progress = orDiscard(progress)
	src, err := sourceRoot()
	if err != nil {
		return "", err
	}
	kernel, err := FetchKernel(ctx, cacheDir, progress)
	if err != nil {
		return "", err
	}
	return buildInitramfs(ctx, cacheDir, src, kernel, defaultOptions, progress)
}

func buildInitramfs(ctx context.Context, cacheDir, src string, kernel KernelTree, opts buildOptions, progress io.Writer) (string, error) {
	uroot, err := downloadModule(ctx, URootModule, URootVersion, progress)
	if err != nil {
		return "", err
	}
	in := initramfsInputs{
		Format:  keyFormat,
		URoot:   uroot.Path + " " + uroot.Version + " " + uroot.Sum,
		Options: opts,
	}
	if in.GoEnv, err = goEnv(ctx, opts.env(), progress); err != nil {
		return "", err
	}
	if in.Guest, err = sourceInputs(ctx, src, guestPackage, opts.env(), progress); err != nil {
		return "", err
	}
	files, err := moduleFiles(kernel, opts.Modules)
	if err != nil {
		return "", err
	}
	in.Kernel = kernel.Version
	for _, f := range files {
		sum, err := fileSHA256(f.Src)
		if err != nil {
			return "", err
		}
		in.Modules = append(in.Modules, f.Dst+" "+sum)
	}
	out := filepath.Join(cacheDir, "initramfs", "initramfs-"+in.key()[:24]+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}

	tool, err := urootTool(ctx, cacheDir, uroot.Dir, progress)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(progress, "guestimage: building %s\n", out)
	err = installOnce(out, func(tmp string) error {
		return makeInitramfs(ctx, tmp, src, tool, uroot.Dir, opts, files, progress)
	})
	if err != nil {
		return "", fmt.Errorf("build initramfs %s: %w", out, err)
	}
	return out, nil
}

// makeInitramfs builds bunkerguest from the source tree src, then runs the
// u-root tool in u-root's module directory to write the archive, with files,
// to out.
func makeInitramfs(ctx context.Context, out, src, tool, urootDir string, opts buildOptions, files []imageFile, progress io.Writer) error {
	work, err := os.MkdirTemp("", "bunkerbuild-initramfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	guestBin := filepath.Join(work, "bunkerguest")
	args := append([]string{"build"}, opts.GuestBuildFlags...)
	args = append(args, "-o", guestBin, guestPackage)
	if err := command(ctx, src, opts.env(), progress, "go", args...); err != nil {
		return err
	}
	// u-root runs go from $GOROOT/bin: make it the go used above.
	goroot, err := output(ctx, "", opts.env(), progress, "go", "env", "GOROOT")
	if err != nil {
		return err
	}
	env := append(opts.env(), "GOROOT="+strings.TrimSpace(string(goroot)))
	uArgs := opts.urootArgs(out, guestBin, filepath.Join(work, "u-root"), files)
	return command(ctx, urootDir, env, progress, tool, uArgs...)
}

// moduleFiles maps the modules (relative to the kernel's modules directory)
// to their places in the image, lib/modules/<release>/<file name>.
func moduleFiles(k KernelTree, modules []string) ([]imageFile, error) {
	var files []imageFile
	for _, m := range modules {
		src := filepath.Join(k.ModulesDir, filepath.FromSlash(m))
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("kernel %s: module for the initramfs: %w", k.Version, err)
		}
		files = append(files, imageFile{Src: src, Dst: path.Join("lib/modules", k.Version, path.Base(m))})
	}
	return files, nil
}

func fileSHA256(name string) (string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// urootTool returns the u-root command, built once from its module
// directory (so with the dependencies u-root was released with) and kept in
// the cache.
func urootTool(ctx context.Context, cacheDir, urootDir string, progress io.Writer) (string, error) {
	bin := filepath.Join(cacheDir, "tools", "u-root-"+URootVersion)
	err := installOnce(bin, func(tmp string) error {
		fmt.Fprintf(progress, "guestimage: building u-root %s\n", URootVersion)
		env := []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly", "GOOS=", "GOARCH="}
		return command(ctx, urootDir, env, progress, "go", "build", "-trimpath", "-o", tmp, ".")
	})
	if err != nil {
		return "", fmt.Errorf("build u-root tool: %w", err)
	}
	return bin, nil
}

type module struct {
	Path, Version, Dir, Sum, Error string
}

// downloadModule fetches a module through the Go module proxy (or finds it
// in the module cache) and returns where it is.
func downloadModule(ctx context.Context, path, version string, progress io.Writer) (module, error) {
	// Run from the temporary directory, normally outside any module.
	out, err := output(ctx, os.TempDir(), []string{"GOWORK=off", "GOFLAGS="}, progress,
		"go", "mod", "download", "-json", path+"@"+version)
	var m module
	if jerr := json.Unmarshal(out, &m); jerr != nil && err == nil {
		err = fmt.Errorf("go mod download %s@%s: %w", path, version, jerr)
	}
	if m.Error != "" {
		err = fmt.Errorf("go mod download %s@%s: %s", path, version, m.Error)
	}
	if err == nil && m.Dir == "" {
		err = fmt.Errorf("go mod download %s@%s: no directory in output", path, version)
	}
	return m, err
}

// goEnv returns the settings of the go command that change what it builds.
func goEnv(ctx context.Context, env []string, progress io.Writer) (string, error) {
	out, err := output(ctx, os.TempDir(), env, progress,
		"go", "env", "GOVERSION", "GOOS", "GOARCH", "GOAMD64", "GOEXPERIMENT", "GOFLAGS")
	return string(out), err
}

// listedPackage is what go list -json says about a package.
type listedPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
	EmbedFiles []string
	Module     *struct {
		Path, Version string
		Main          bool
		Replace       *struct{ Path, Version string }
	}
}

// sourceInputs describes what the package pkg in module root src is built
// from: a "file <path> <sha256>" line for every source file of its own
// module, and a "module <path> <version>" line for every other module it
// imports. The standard library is covered by the Go version.
func sourceInputs(ctx context.Context, src, pkg string, env []string, progress io.Writer) ([]string, error) {
	out, err := output(ctx, src, env, progress, "go", "list", "-deps",
		"-json=ImportPath,Dir,Standard,GoFiles,EmbedFiles,Module", pkg)
	if err != nil {
		return nil, err
	}
	var inputs []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list %s: %w", pkg, err)
		}
		lines, err := packageInputs(src, p)
		if err != nil {
			return nil, err
		}
		inputs = append(inputs, lines...)
	}
	slices.Sort(inputs)
	return slices.Compact(inputs), nil
}

func packageInputs(src string, p listedPackage) ([]string, error) {
	switch {
	case p.Standard:
		return nil, nil
	case p.Module == nil:
		return nil, fmt.Errorf("package %s is in no module", p.ImportPath)
	case p.Module.Replace != nil && p.Module.Replace.Version != "":
		return []string{"module " + p.Module.Replace.Path + " " + p.Module.Replace.Version}, nil
	case !p.Module.Main && p.Module.Replace == nil:
		return []string{"module " + p.Module.Path + " " + p.Module.Version}, nil
	}
	// Our own module, or one replaced by a local directory: hash the files.
	var lines []string
	for _, name := range slices.Concat(p.GoFiles, p.EmbedFiles) {
		file := filepath.Join(p.Dir, name)
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		rel, err := filepath.Rel(src, file)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(data)
		lines = append(lines, "file "+filepath.ToSlash(rel)+" "+hex.EncodeToString(sum[:]))
	}
	return lines, nil
}

// sourceRoot returns the root of the bunkerbuild source tree, looked for
// upward from the working directory, then from where this package was
// compiled.
func sourceRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		if root, ok := findModuleRoot(dir, modulePath); ok {
			return root, nil
		}
	}
	return "", fmt.Errorf("bunkerbuild source tree (go.mod of %s) not found above %s", modulePath, strings.Join(starts, " or "))
}

// findModuleRoot returns the nearest directory at or above dir whose go.mod
// declares module path.
func findModuleRoot(dir, path string) (string, bool) {
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && goModPath(data) == path {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// goModPath returns the module path a go.mod file declares, or "".
func goModPath(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		line, _, _ = strings.Cut(line, "//")
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], "`\"")
		}
	}
	return ""
}
