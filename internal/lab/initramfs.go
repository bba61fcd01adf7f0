package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	"github.com/bunkerbuild/bunkerbuild/internal/lab/labproto"
)

// initSources holds L1's init and the protocol package it shares with this
// one. The lab builds init from them, so a lab user needs a Go toolchain but
// not this module's source tree.
//
//go:embed l1init/*.go labproto/*.go
var initSources embed.FS

// initramfsFormat changes whenever writeInitramfs lays files out differently.
const initramfsFormat = "1"

// sourceFiles returns the non-test files of initSources by path.
func sourceFiles() (map[string][]byte, error) {
	files := make(map[string][]byte)
	err := fs.WalkDir(initSources, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(name, "_test.go") {
			return err
		}
		b, err := initSources.ReadFile(name)
		files[name] = b
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded init sources: %w", err)
	}
	return files, nil
}

// initramfsKey hashes everything an initramfs is built from.
func initramfsKey(sources map[string][]byte, kernelVersion, goVersion string) string {
	h := sha256.New()
	fmt.Fprintf(h, "format %s\nkernel %s\ngo %s\n", initramfsFormat, kernelVersion, goVersion)
	for _, r := range moduleRoots {
		fmt.Fprintf(h, "module %s %s\n", r.name, r.cpuFlag)
	}
	names := make([]string, 0, len(sources))
	for name := range sources {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(h, "file %s %d\n", name, len(sources[name]))
		h.Write(sources[name])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// initramfs returns the path of L1's initramfs for k, building it into the
// cache unless it is there already.
func initramfs(ctx context.Context, cfg Config, k kernel) (string, error) {
	goBin, err := goCommand()
	if err != nil {
		return "", err
	}
	goVersion, err := goEnv(ctx, goBin, "GOVERSION")
	if err != nil {
		return "", err
	}
	sources, err := sourceFiles()
	if err != nil {
		return "", err
	}
	final := filepath.Join(cfg.CacheDir, "lab",
		fmt.Sprintf("initramfs-%s-%s.cpio", k.version, initramfsKey(sources, k.version, goVersion)))
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	cfg.progressf("building L1 initramfs: init with %s, modules of kernel %s", goVersion, k.version)
	tree, err := readModuleTree(k.modulesDir)
	if err != nil {
		return "", err
	}
	loads, err := resolveModules(moduleRoots, tree.files, tree.builtin, tree.depends)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp("", "bunkerlab-init-")
	if err != nil {
		return "", fmt.Errorf("build L1 init: %w", err)
	}
	defer os.RemoveAll(tmp)
	initBin := filepath.Join(tmp, "init")
	if err := buildInit(ctx, goBin, sources, filepath.Join(tmp, "src"), initBin); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return "", err
	}
	err = fsutil.WriteFile(final, 0o644, func(w io.Writer) error {
		return writeInitramfs(w, initBin, k, loads)
	})
	if err != nil {
		return "", fmt.Errorf("write L1 initramfs: %w", err)
	}
	return final, nil
}

// goCommand finds the go command that builds L1's init.
func goCommand() (string, error) {
	p, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find the go command (needed to build L1's init): %w", err)
	}
	return p, nil
}

func goEnv(ctx context.Context, goBin, key string) (string, error) {
	out, err := exec.CommandContext(ctx, goBin, "env", key).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", key, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// buildInit writes sources into a stand-alone module in srcDir, with this
// module's path so that imports resolve, and builds a static init binary.
func buildInit(ctx context.Context, goBin string, sources map[string][]byte, srcDir, out string) error {
	files := map[string][]byte{"go.mod": []byte("module github.com/bunkerbuild/bunkerbuild\n\ngo 1.24\n")}
	for name, b := range sources {
		files[path.Join("internal/lab", name)] = b
	}
	for name, b := range files {
		p := filepath.Join(srcDir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("build L1 init: %w", err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("build L1 init: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w",
		"-o", out, "./internal/lab/l1init")
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64",
		"GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build L1 init: go build: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// writeInitramfs writes L1's initramfs: init, the modules in loads and
// their list, and the mount points init needs. The modules are decompressed
// and unsigned: under TCG, the kernel would take longer to do either.
func writeInitramfs(w io.Writer, initBin string, k kernel, loads []moduleLoad) error {
	c := newCPIOWriter(w)
	for _, d := range []string{"dev", "proc", "sys", "lab", labproto.HostRoot} {
		c.Dir(d, 0o755)
	}
	// The kernel opens /dev/console as init's stdin, stdout and stderr
	// before devtmpfs is mounted.
	c.CharDev("dev/console", 0o600, 5, 1)
	b, err := os.ReadFile(initBin)
	if err != nil {
		return err
	}
	c.File("init", 0o755, b)
	var list strings.Builder
	for _, l := range loads {
		b, err := readModuleObject(filepath.Join(k.modulesDir, l.path))
		if err != nil {
			return err
		}
		name := path.Join("/lib/modules", k.version, trimCompression(filepath.ToSlash(l.path)))
		c.File(name, 0o644, stripModuleSignature(b))
		list.WriteString(labproto.FormatModuleLine(name, l.cpuFlag))
	}
	c.File(labproto.ModulesPath, 0o644, []byte(list.String()))
	return c.Close()
}

// writeRunInitrd writes to dst the initramfs of one run: the cached base
// followed by a second archive that holds the request. The kernel unpacks
// concatenated archives in order.
func writeRunInitrd(dst, base string, req labproto.Request) error {
	reqJSON, err := labproto.EncodeRequest(req)
	if err != nil {
		return err
	}
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("write run initrd: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("write run initrd: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("write run initrd: %w", err)
	}
	c := newCPIOWriter(out)
	c.File(labproto.RequestPath, 0o644, reqJSON)
	if err := errors.Join(c.Close(), out.Close()); err != nil {
		return fmt.Errorf("write run initrd: %w", err)
	}
	return nil
}
