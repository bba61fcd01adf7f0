package isolate

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// elfDeps returns the mounts a dynamically linked program needs: its ELF
// interpreter (PT_INTERP) at the path the kernel loads it from, and every
// shared library in the closure of DT_NEEDED at the path the interpreter
// will find it. The sandbox has no /etc/ld.so.cache, so the interpreter
// searches DT_RPATH, DT_RUNPATH and then its built-in system directories;
// elfDeps searches the same, in the same order. A static program (such as
// a Go program built with CGO_ENABLED=0, or without cgo packages) needs
// nothing. Scripts (#!) are refused: their interpreter is not resolved.
func elfDeps(prog string) ([]mountSpec, error) {
	file, err := os.Open(prog)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var magic [4]byte
	if _, err := file.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
		return nil, fmt.Errorf("not an ELF executable (it starts %q)", magic[:])
	}
	f, err := elf.NewFile(file)
	if err != nil {
		return nil, fmt.Errorf("not a valid ELF executable: %w", err)
	}
	interp, err := interpreter(f)
	if err != nil || interp == "" {
		return nil, err
	}
	var mounts []mountSpec
	add := func(target string) error {
		src, err := filepath.EvalSymlinks(target)
		if err != nil {
			return err
		}
		mounts = append(mounts, mountSpec{Source: src, Target: filepath.Clean(target), Kind: kindExec})
		return nil
	}
	if err := add(interp); err != nil {
		return nil, fmt.Errorf("ELF interpreter: %w", err)
	}

	r := resolver{class: f.Class, machine: f.Machine, seen: map[string]bool{}}
	r.system = systemLibDirs(f.Machine)
	exeRPath, err := rpath(f, prog, elf.DT_RPATH)
	if err != nil {
		return nil, err
	}
	type object struct {
		path string // as found (the path the interpreter opens)
		file *elf.File
	}
	queue := []object{{prog, f}}
	for len(queue) > 0 {
		obj := queue[0]
		queue = queue[1:]
		needed, err := obj.file.DynString(elf.DT_NEEDED)
		if err != nil {
			return nil, fmt.Errorf("%s: DT_NEEDED: %w", obj.path, err)
		}
		// DT_RUNPATH replaces DT_RPATH, and applies only to the object's
		// own dependencies; DT_RPATH of the object and of the program
		// apply otherwise.
		var dirs []string
		runpath, err := rpath(obj.file, obj.path, elf.DT_RUNPATH)
		if err != nil {
			return nil, err
		}
		if len(runpath) == 0 {
			own, err := rpath(obj.file, obj.path, elf.DT_RPATH)
			if err != nil {
				return nil, err
			}
			dirs = slices.Concat(own, exeRPath)
		}
		dirs = append(dirs, runpath...)
		for _, name := range needed {
			p, lib, err := r.find(name, dirs)
			if err != nil {
				return nil, fmt.Errorf("library %s needed by %s: %w", name, obj.path, err)
			}
			if p == "" { // already resolved
				continue
			}
			if err := add(p); err != nil {
				lib.Close()
				return nil, fmt.Errorf("library %s: %w", name, err)
			}
			queue = append(queue, object{p, lib})
		}
		if obj.file != f {
			obj.file.Close()
		}
	}
	return mounts, nil
}

// interpreter returns the program's PT_INTERP, or "" if it has none.
func interpreter(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("reading PT_INTERP: %w", err)
		}
		s := strings.TrimRight(string(b), "\x00")
		if !filepath.IsAbs(s) {
			return "", fmt.Errorf("PT_INTERP %q is not absolute", s)
		}
		return s, nil
	}
	return "", nil
}

// rpath returns the directories of f's tag (DT_RPATH or DT_RUNPATH), with
// $ORIGIN expanded to the directory of path. Entries with other dynamic
// string tokens ($LIB, $PLATFORM) are skipped.
func rpath(f *elf.File, path string, tag elf.DynTag) ([]string, error) {
	vals, err := f.DynString(tag)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", path, tag, err)
	}
	origin := filepath.Dir(path)
	var dirs []string
	for _, v := range vals {
		for d := range strings.SplitSeq(v, ":") {
			d = strings.ReplaceAll(d, "${ORIGIN}", origin)
			d = strings.ReplaceAll(d, "$ORIGIN", origin)
			if d == "" || strings.Contains(d, "$") || !filepath.IsAbs(d) {
				continue
			}
			dirs = append(dirs, filepath.Clean(d))
		}
	}
	return dirs, nil
}

// systemLibDirs are glibc's built-in library directories for machine m,
// Debian's multiarch ones first.
func systemLibDirs(m elf.Machine) []string {
	triplet := map[elf.Machine]string{
		elf.EM_X86_64:  "x86_64-linux-gnu",
		elf.EM_AARCH64: "aarch64-linux-gnu",
		elf.EM_386:     "i386-linux-gnu",
		elf.EM_RISCV:   "riscv64-linux-gnu",
	}[m]
	var dirs []string
	if triplet != "" {
		dirs = append(dirs, "/lib/"+triplet, "/usr/lib/"+triplet)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// resolver finds shared libraries as the ELF interpreter would.
type resolver struct {
	class   elf.Class
	machine elf.Machine
	system  []string
	seen    map[string]bool // names and paths already resolved
}

// find returns the path of library name, searched in dirs and then the
// system directories, and the opened library; or "" if name was already
// resolved.
func (r *resolver) find(name string, dirs []string) (string, *elf.File, error) {
	if r.seen[name] {
		return "", nil, nil
	}
	var candidates []string
	if strings.Contains(name, "/") {
		candidates = []string{name}
	} else {
		for _, d := range slices.Concat(dirs, r.system) {
			candidates = append(candidates, filepath.Join(d, name))
		}
	}
	for _, c := range candidates {
		lib, err := elf.Open(c)
		if err != nil {
			continue
		}
		if lib.Class != r.class || lib.Machine != r.machine {
			lib.Close()
			continue
		}
		r.seen[name] = true
		if r.seen[c] {
			lib.Close()
			return "", nil, nil
		}
		r.seen[c] = true
		return c, lib, nil
	}
	return "", nil, fmt.Errorf("not found (searched %s)", strings.Join(candidates, ", "))
}
