package isolate

import (
	"cmp"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// config is what Run sends the sandbox's init: everything resolved on the
// host, so that the init only carries it out.
type config struct {
	Path   string // the program, by its real host path
	Args   []string
	Env    []string
	Dir    string
	Mounts []mountSpec // sorted by Target
	Limits Limits
	// ParentMountNS is the inode of Run's mount namespace; the init
	// refuses to touch mounts if it is still in it.
	ParentMountNS uint64
	// Probe makes the init set up the sandbox and exit 0 (Available).
	Probe bool
}

// mountKind is how a host path is shown in the sandbox.
type mountKind int

const (
	kindInput  mountKind = iota // read-only, noexec
	kindExec                    // read-only, executable: the program and its ELF interpreter and libraries
	kindOutput                  // read-write, noexec
	kindDevice                  // a device node, read-write
)

func (k mountKind) String() string {
	switch k {
	case kindInput:
		return "input"
	case kindExec:
		return "program"
	case kindOutput:
		return "output"
	case kindDevice:
		return "device"
	}
	return fmt.Sprintf("mountKind(%d)", int(k))
}

// mountSpec is one host path bound into the sandbox.
type mountSpec struct {
	Source string // host path, symlinks resolved
	Target string // absolute, clean path inside
	Kind   mountKind
	Dir    bool // Source is a directory
}

// defaultDevices are bound into every sandbox's /dev.
var defaultDevices = []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}

// plan checks s against the host and resolves it into a config. A Spec
// without Args makes a probe (Available).
func plan(s Spec) (*config, error) {
	cfg := &config{
		Args:   s.Args,
		Env:    s.Env,
		Dir:    cmp.Or(s.Dir, "/"),
		Limits: s.Limits,
		Probe:  len(s.Args) == 0,
	}
	if !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("isolate: working directory %q is not absolute", s.Dir)
	}
	var mounts []mountSpec
	if !cfg.Probe {
		path, err := exec.LookPath(s.Args[0])
		if err != nil {
			return nil, fmt.Errorf("isolate: program: %w", err)
		}
		real, err := realPath(path)
		if err != nil {
			return nil, fmt.Errorf("isolate: program: %w", err)
		}
		cfg.Path = real
		mounts = append(mounts, mountSpec{Source: real, Target: real, Kind: kindExec})
		deps, err := elfDeps(real)
		if err != nil {
			return nil, fmt.Errorf("isolate: program %s: %w", real, err)
		}
		mounts = append(mounts, deps...)
	}
	for _, p := range s.Inputs {
		m, err := hostMount(p, kindInput)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, m)
	}
	if s.Output != "" {
		m, err := hostMount(s.Output, kindOutput)
		if err != nil {
			return nil, err
		}
		if !m.Dir {
			return nil, fmt.Errorf("isolate: output %s is not a directory", s.Output)
		}
		mounts = append(mounts, m)
	}
	for _, p := range append(slices.Clone(defaultDevices), s.Devices...) {
		m, err := hostMount(p, kindDevice)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, m)
	}
	mounts, err := mergeMounts(mounts)
	if err != nil {
		return nil, err
	}
	cfg.Mounts = mounts
	return cfg, nil
}

// hostMount resolves the host path p, given by the caller, into a mount of
// kind k at the same absolute path.
func hostMount(p string, k mountKind) (mountSpec, error) {
	target, err := filepath.Abs(p)
	if err != nil {
		return mountSpec{}, fmt.Errorf("isolate: %s %s: %w", k, p, err)
	}
	source, err := filepath.EvalSymlinks(target)
	if err != nil {
		return mountSpec{}, fmt.Errorf("isolate: %s: %w", k, err)
	}
	fi, err := os.Stat(source)
	if err != nil {
		return mountSpec{}, fmt.Errorf("isolate: %s: %w", k, err)
	}
	if k == kindDevice && fi.Mode()&fs.ModeDevice == 0 {
		return mountSpec{}, fmt.Errorf("isolate: device %s is not a device node (%v)", p, fi.Mode().Type())
	}
	if err := checkTarget(target); err != nil {
		return mountSpec{}, fmt.Errorf("isolate: %s %s: %w", k, p, err)
	}
	return mountSpec{Source: source, Target: target, Kind: k, Dir: fi.IsDir()}, nil
}

// checkTarget refuses paths the sandbox's own mounts need.
func checkTarget(t string) error {
	switch {
	case t == "/", t == "/dev", t == "/tmp":
		return fmt.Errorf("%s would hide the sandbox's own %s", t, t)
	case t == "/proc" || strings.HasPrefix(t, "/proc/"):
		return fmt.Errorf("paths under /proc cannot be bound into the sandbox")
	}
	return nil
}

// realPath is p, absolute with symlinks resolved.
func realPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(a)
}

// mergeMounts sorts ms by target, so that a directory is bound before what
// lies under it, merges duplicates, and refuses conflicts.
func mergeMounts(ms []mountSpec) ([]mountSpec, error) {
	slices.SortStableFunc(ms, func(a, b mountSpec) int { return strings.Compare(a.Target, b.Target) })
	var out []mountSpec
	for _, m := range ms {
		if n := len(out); n > 0 && out[n-1].Target == m.Target {
			prev := &out[n-1]
			switch {
			case prev.Source != m.Source:
				return nil, fmt.Errorf("isolate: %s is both %s %s and %s %s", m.Target, prev.Kind, prev.Source, m.Kind, m.Source)
			case prev.Kind == m.Kind:
			case prev.Kind == kindInput && m.Kind == kindExec:
				prev.Kind = kindExec // a file both read and run: read-only, executable
			case prev.Kind == kindExec && m.Kind == kindInput:
			default:
				return nil, fmt.Errorf("isolate: %s is both %s and %s", m.Target, prev.Kind, m.Kind)
			}
			continue
		}
		out = append(out, m)
	}
	// Nothing may be bound under the output: its mount point would have
	// to be made in the host's directory.
	for _, o := range out {
		if o.Kind != kindOutput {
			continue
		}
		for _, m := range out {
			if m.Target != o.Target && within(m.Target, o.Target) {
				return nil, fmt.Errorf("isolate: %s %s is inside the output directory %s", m.Kind, m.Target, o.Target)
			}
		}
	}
	return out, nil
}

// within says whether path p is dir or lies under it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
