package lab

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// moduleRoots are the modules L1 needs; resolveModules adds what they depend
// on. Each KVM vendor module is loaded only on a CPU with its vendor's
// virtualization flag.
var moduleRoots = []moduleRoot{
	{name: "kvm_amd", cpuFlag: "svm"},
	{name: "kvm_intel", cpuFlag: "vmx"},
	{name: "9pnet_virtio"},
	{name: "9p"},
	{name: "tun"}, // tap devices, for the virtio-net tests
}

type moduleRoot struct {
	name    string
	cpuFlag string // if set, load only if /proc/cpuinfo has this flag
}

// moduleLoad is one module file to load, relative to the modules directory.
type moduleLoad struct {
	path    string
	cpuFlag string
}

// moduleName returns the kernel's name for a module file:
// "kernel/arch/x86/kvm/kvm-amd.ko.xz" is "kvm_amd".
func moduleName(file string) string {
	base := trimCompression(filepath.Base(file))
	return strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")
}

// trimCompression removes a compression extension from a module file name.
func trimCompression(file string) string {
	for _, ext := range []string{".xz", ".gz", ".zst"} {
		if s, ok := strings.CutSuffix(file, ext); ok {
			return s
		}
	}
	return file
}

// moduleTree describes a /lib/modules/<version> directory.
type moduleTree struct {
	dir     string
	files   map[string]string // module name to path relative to dir
	builtin map[string]bool   // names of modules built into the kernel
}

// readModuleTree indexes the module files under dir/kernel and reads
// dir/modules.builtin.
func readModuleTree(dir string) (*moduleTree, error) {
	t := &moduleTree{dir: dir, files: make(map[string]string), builtin: make(map[string]bool)}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.Contains(d.Name(), ".ko") {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			t.files[moduleName(rel)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index kernel modules: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read builtin modules: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" {
			t.builtin[moduleName(line)] = true
		}
	}
	return t, nil
}

// depends returns the modules that the module name depends on, from the
// "depends=" field of its .modinfo section (what depmod reads too).
func (t *moduleTree) depends(name string) ([]string, error) {
	rel, ok := t.files[name]
	if !ok {
		return nil, fmt.Errorf("module %s: not in %s", name, t.dir)
	}
	obj, err := readModuleObject(filepath.Join(t.dir, rel))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", name)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: read .modinfo: %w", name, err)
	}
	return parseModinfoDepends(info), nil
}

// parseModinfoDepends returns the names in the "depends=" entry of a
// .modinfo section (NUL-separated key=value strings).
func parseModinfoDepends(info []byte) []string {
	for field := range bytes.SplitSeq(info, []byte{0}) {
		v, ok := bytes.CutPrefix(field, []byte("depends="))
		if !ok {
			continue
		}
		var deps []string
		for d := range strings.SplitSeq(string(v), ",") {
			if d != "" {
				deps = append(deps, strings.ReplaceAll(d, "-", "_"))
			}
		}
		return deps
	}
	return nil
}

// readModuleObject returns the ELF object of a module file, decompressed.
func readModuleObject(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = bufio.NewReader(f)
	switch filepath.Ext(path) {
	case ".xz":
		if r, err = xz.NewReader(r); err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
	case ".gz":
		if r, err = gzip.NewReader(r); err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
	case ".ko":
	default:
		return nil, fmt.Errorf("read %s: unsupported module compression", path)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", path, err)
	}
	return b, nil
}

// resolveModules returns the module files to load for roots, each after the
// modules it depends on. Roots built into the kernel are skipped. A root's
// CPU flag stays with the root; its dependencies load unconditionally.
func resolveModules(roots []moduleRoot, files map[string]string, builtin map[string]bool,
	depends func(name string) ([]string, error)) ([]moduleLoad, error) {
	var loads []moduleLoad
	state := make(map[string]int) // 1: visiting, 2: done
	var visit func(name string, chain []string, cpuFlag string) error
	visit = func(name string, chain []string, cpuFlag string) error {
		chain = append(chain, name)
		switch state[name] {
		case 1:
			return fmt.Errorf("resolve modules: dependency cycle %s", strings.Join(chain, " -> "))
		case 2:
			return nil
		}
		state[name] = 1
		deps, err := depends(name)
		if err != nil {
			return fmt.Errorf("resolve modules (%s): %w", strings.Join(chain, " -> "), err)
		}
		for _, d := range deps {
			if err := visit(d, chain, ""); err != nil {
				return err
			}
		}
		state[name] = 2
		loads = append(loads, moduleLoad{path: files[name], cpuFlag: cpuFlag})
		return nil
	}
	for _, r := range roots {
		if _, ok := files[r.name]; !ok && builtin[r.name] {
			continue
		}
		if err := visit(r.name, nil, r.cpuFlag); err != nil {
			return nil, err
		}
	}
	return loads, nil
}

// moduleSigMagic ends a signed module (include/linux/module_signature.h).
const moduleSigMagic = "~Module signature appended~\n"

// stripModuleSignature returns obj without its appended signature, if it
// has one. The kernel then skips verifying it, which under TCG costs more
// than loading the module; it taints itself instead ("module verification
// failed"), which does not matter in L1. Without an enforced signature
// policy the module loads the same either way.
func stripModuleSignature(obj []byte) []byte {
	const sigInfoLen = 12 // struct module_signature; sig_len is its last 4 bytes, big-endian
	rest, ok := bytes.CutSuffix(obj, []byte(moduleSigMagic))
	if !ok || len(rest) < sigInfoLen {
		return obj
	}
	info := rest[len(rest)-sigInfoLen:]
	sigLen := int(binary.BigEndian.Uint32(info[8:]))
	if sigLen > len(rest)-sigInfoLen {
		return obj
	}
	return rest[:len(rest)-sigInfoLen-sigLen]
}
