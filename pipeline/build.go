package pipeline

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
	"github.com/bunkerbuild/bunkerbuild/pipeline/recipe"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// StateBlob is the artifact blob holding the machine state.
const StateBlob = "machine/state"

// Runner runs the boot stage: the command argv, which may read inputs and
// use devices, and writes only into dir.
type Runner func(ctx context.Context, argv []string, inputs, devices []string, dir string, progress io.Writer) error

// BuildOptions configure Build.
type BuildOptions struct {
	Progress io.Writer // progress lines for a person; nil for none
	CacheDir string    // the default guest's cache
	// StageCommand is the argv prefix that runs the boot stage; the stage
	// directory is appended. Usually {"/path/to/bunkerbuild", "boot-stage"}.
	StageCommand []string
	// Run runs the boot stage; IsolatedRunner keeps it in a sandbox.
	Run Runner
	// Version is recorded in the artifact.
	Version string
}

// Build boots the recipe's guest, captures it once booted, and writes the
// signed artifact to the recipe's output path. It returns the path.
func Build(ctx context.Context, r *recipe.Recipe, o BuildOptions) (string, error) {
	p := newProgress(o.Progress)
	start := time.Now()
	if len(o.StageCommand) == 0 || o.Run == nil {
		return "", errors.New("build: no boot stage command or runner")
	}
	switch {
	case r.Guest.Disk != "":
		return "", r.Errorf("guest.disk", "booting from a disk image is not supported yet")
	case r.Booted.GuestSignal:
		return "", r.Errorf("booted.guest-signal", "the guest-signal condition is not supported yet; use console or legacy-idle")
	}
	// Load the key before booting anything: a missing key should not cost a boot.
	key, err := snapshots.LoadPrivateKey(r.Output.SigningKey)
	if err != nil {
		return "", fmt.Errorf("%v: signing key: %w (make one with: bunkerbuild keygen %s KEY.pub)", r.Pos("output.signing-key"), err, r.Output.SigningKey)
	}

	p.stage("guest", "resolving the kernel and initramfs")
	kernel, initrd, err := resolveGuest(ctx, r, o.CacheDir, p)
	if err != nil {
		return "", err
	}
	p.step("kernel %s", kernel)
	if initrd != "" {
		p.step("initrd %s", initrd)
	}

	p.stage("boot", "booting on the full-device VMM in an isolated child (%d vCPUs, %d MiB)", r.Machine.CPUs, r.Machine.Memory>>20)
	if err := os.MkdirAll(filepath.Dir(r.Output.Path), 0o755); err != nil {
		return "", fmt.Errorf("output directory: %w", err)
	}
	// The stage directory holds a sparse copy of guest memory: keep it on
	// local temporary storage ($TMPDIR), not next to the output.
	dir, err := os.MkdirTemp("", "bunkerbuild-stage-*")
	if err != nil {
		return "", fmt.Errorf("stage directory: %w", err)
	}
	defer os.RemoveAll(dir)
	spec := StageSpec{Kernel: kernel, Initrd: initrd, Cmdline: r.Guest.Cmdline, Memory: r.Machine.Memory, CPUs: r.Machine.CPUs,
		LegacyIdle: r.Booted.LegacyIdle, Settle: r.Booted.Settle, Timeout: r.Booted.Timeout}
	if r.Booted.Console != nil {
		spec.Console = r.Booted.Console.String()
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, SpecFile), b); err != nil {
		return "", err
	}
	inputs := []string{kernel}
	if initrd != "" {
		inputs = append(inputs, initrd)
	}
	argv := append(append([]string(nil), o.StageCommand...), dir)
	bootStart := time.Now()
	if err := o.Run(ctx, argv, inputs, []string{"/dev/kvm"}, dir, p.prefixed("  boot: ")); err != nil {
		return "", fmt.Errorf("boot stage: %w%s", err, consoleTail(dir))
	}
	p.step("booted and captured in %v", time.Since(bootStart).Round(time.Millisecond))

	p.stage("sign", "writing %s", r.Output.Path)
	md := snapshots.Metadata{Profile: inventory.Full.String(), VCPUs: r.Machine.CPUs, Recipe: r.Name,
		BuilderVersion: o.Version, Created: time.Now(),
		Labels: map[string]string{"resume-profile": inventory.Minimal.String()}}
	if err := writeArtifact(dir, r.Output.Path, r.Machine.Memory, r.Machine.CPUs, md, key); err != nil {
		return "", err
	}
	st, err := os.Stat(r.Output.Path)
	if err != nil {
		return "", err
	}
	p.step("signed with key %s; %d MiB on disk for %d MiB of guest memory", snapshots.KeyID(key.Public().(ed25519.PublicKey)), st.Size()>>20, r.Machine.Memory>>20)
	p.done("built %s in %v", r.Output.Path, time.Since(start).Round(time.Millisecond))
	return r.Output.Path, nil
}

func resolveGuest(ctx context.Context, r *recipe.Recipe, cache string, p *progress) (kernel, initrd string, err error) {
	kernel, initrd = r.Guest.Kernel, r.Guest.Initrd
	if kernel == recipe.Default {
		if kernel, err = guestimage.Kernel(ctx, cache, p.prefixed("  guest: ")); err != nil {
			return "", "", err
		}
	}
	if initrd == recipe.Default {
		if initrd, err = guestimage.Initramfs(ctx, cache, p.prefixed("  guest: ")); err != nil {
			return "", "", err
		}
	}
	for _, f := range []string{kernel, initrd} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err != nil {
			return "", "", err
		} else if !st.Mode().IsRegular() {
			return "", "", fmt.Errorf("%s is not a regular file", f)
		}
	}
	return kernel, initrd, nil
}

// consoleTail returns the end of the stage's console log, for errors.
func consoleTail(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, ConsoleFile))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return "\nlast console output:\n" + string(b)
}

// writeArtifact turns the boot stage's output in dir into a signed
// artifact. The stage's files are untrusted: their sizes are checked
// against the recipe before anything is read.
func writeArtifact(dir, out string, memSize uint64, cpus int, md snapshots.Metadata, key ed25519.PrivateKey) (err error) {
	stateJSON, err := readBounded(filepath.Join(dir, StateFile), maxStateSize)
	if err != nil {
		return fmt.Errorf("boot stage output: %w", err)
	}
	var st machine.State
	if err := json.Unmarshal(stateJSON, &st); err != nil {
		return fmt.Errorf("boot stage output %s: %w", StateFile, err)
	}
	if st.Memory != memSize || st.CPUs != cpus || len(st.VCPUs) != cpus {
		return fmt.Errorf("boot stage output %s: %d vCPUs and %d bytes of memory, the recipe has %d and %d", StateFile, len(st.VCPUs), st.Memory, cpus, memSize)
	}
	var regions []snapshots.MemRegion
	for i, r := range memory.Regions(memSize) {
		data, unmap, err := mapFile(filepath.Join(dir, fmt.Sprintf(memoryFile, i)), r.Size)
		if err != nil {
			return fmt.Errorf("boot stage output: %w", err)
		}
		defer unmap()
		regions = append(regions, snapshots.MemRegion{GPA: r.GPA, Data: data})
	}
	w, err := snapshots.Create(out, md)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	if err = w.AddBlob(StateBlob, stateJSON); err != nil {
		return err
	}
	if err = w.AddMemory(regions); err != nil {
		return err
	}
	return w.Commit(key)
}

func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// mapFile maps a memory file read-only after checking its size.
func mapFile(path string, size uint64) ([]byte, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() || uint64(st.Size()) != size {
		return nil, nil, fmt.Errorf("%s: %d bytes, want a regular file of %d", path, st.Size(), size)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fmt.Errorf("map %s: %w", path, err)
	}
	return b, func() { unix.Munmap(b) }, nil
}

