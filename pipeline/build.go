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
	"regexp"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/diskimage"
	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
	"github.com/bunkerbuild/bunkerbuild/pipeline/recipe"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/vmm/boot/linux"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// StateBlob is the artifact blob holding the machine state.
const StateBlob = "machine/state"

// stagePrefix names boot stage directories in $TMPDIR.
const stagePrefix = "bunkerbuild-stage-"

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

// Result describes a build.
type Result struct {
	Path     string             // the artifact
	Digest   string             // its manifest digest
	Stage    StageTiming        // the boot stage's own timing
	Sign     time.Duration      // writing and signing the artifact
	Total    time.Duration      // the whole build
	Artifact *snapshots.Written // what the artifact holds
}

// Build boots the recipe's guest, captures it once booted, and writes the
// signed artifact to the recipe's output path.
func Build(ctx context.Context, r *recipe.Recipe, o BuildOptions) (*Result, error) {
	p := newProgress(o.Progress)
	start := time.Now()
	if len(o.StageCommand) == 0 || o.Run == nil {
		return nil, errors.New("build: no boot stage command or runner")
	}
	if err := checkBootDisk(r); err != nil {
		return nil, err
	}
	// Load the key before booting anything: a missing key should not cost a boot.
	key, err := snapshots.LoadPrivateKey(r.Output.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("%v: signing key: %w (make one with: bunkerbuild keygen %s KEY.pub)", r.Pos("output.signing-key"), err, r.Output.SigningKey)
	}

	var kernel, initrd string
	if r.Guest.Kernel != "" {
		p.stage("guest", "resolving the kernel and initramfs")
		if kernel, initrd, err = resolveGuest(ctx, r, o.CacheDir, p); err != nil {
			return nil, err
		}
		p.step("kernel %s", kernel)
		if initrd != "" {
			p.step("initrd %s", initrd)
		}
	}
	firmware := r.Guest.Firmware
	if firmware == recipe.Default {
		firmware = recipe.DefaultFirmware
	}

	p.stage("boot", "booting on the full-device VMM in an isolated child (%d vCPUs, %d MiB)", r.Machine.CPUs, r.Machine.Memory>>20)
	if err := os.MkdirAll(filepath.Dir(r.Output.Path), 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	// The stage directory holds a sparse copy of guest memory: keep it on
	// local temporary storage ($TMPDIR), not next to the output.
	// A build that was killed left its stage directory: remove those.
	fsutil.RemoveStale(os.TempDir(), stagePrefix)
	dir, err := fsutil.OwnedDir(os.TempDir(), stagePrefix)
	if err != nil {
		return nil, fmt.Errorf("stage directory: %w", err)
	}
	defer os.RemoveAll(dir)
	spec := StageSpec{Kernel: kernel, Initrd: initrd, Cmdline: r.Guest.Cmdline, Memory: r.Machine.Memory, CPUs: r.Machine.CPUs,
		LegacyIdle: r.Booted.LegacyIdle, Settle: r.Booted.Settle, Timeout: r.Booted.Timeout, NIC: r.Machine.NIC}
	if spec.Disks, err = makeDisks(dir, r, p); err != nil {
		return nil, err
	}
	inputs := []string{kernel}
	if initrd != "" {
		inputs = append(inputs, initrd)
	}
	if r.Guest.FirmwareBoot() {
		boot, err := makeBootDisk(ctx, dir, r, kernel, initrd, p)
		if err != nil {
			return nil, err
		}
		// The BIOS boots the first disk; the kernel and initrd are on it.
		spec.Disks = append([]StageDisk{boot}, spec.Disks...)
		spec.Kernel, spec.Initrd, spec.Firmware = "", "", firmware
		inputs = []string{firmware}
		p.step("firmware %s", firmware)
	}
	switch {
	case r.Booted.Console != nil:
		spec.Console = r.Booted.Console.String()
	case r.Booted.GuestSignal:
		// The guest tool's signal is a line on the console.
		spec.Console = `(^|\s)` + regexp.QuoteMeta(guestproto.ReadyLine) + `\s*$`
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteBytes(filepath.Join(dir, SpecFile), 0o600, b); err != nil {
		return nil, err
	}
	argv := append(append([]string(nil), o.StageCommand...), dir)
	bootStart := time.Now()
	if err := o.Run(ctx, argv, inputs, []string{"/dev/kvm"}, dir, p.prefixed("  boot: ")); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("boot stage: interrupted, the isolated child is gone: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("boot stage: %w%s", err, consoleTail(dir))
	}
	p.step("booted and captured in %v", time.Since(bootStart).Round(time.Millisecond))

	p.stage("sign", "writing %s", r.Output.Path)
	cfg := snapshots.Config{Created: time.Now().UTC(), BuilderVersion: o.Version,
		BootProfile: bootProfile(r).String(), ResumeProfile: inventory.Minimal.String(),
		InventoryDigest: digest.Digest(inventory.Digest()), VCPUs: r.Machine.CPUs}
	if cfg.Recipe, err = source(r.File, r.Name, ""); err != nil {
		return nil, err
	}
	if kernel != "" {
		if cfg.Kernel, err = source(kernel, filepath.Base(kernel), kernelRelease(kernel)); err != nil {
			return nil, err
		}
	}
	if spec.Firmware != "" {
		if cfg.Firmware, err = source(firmware, filepath.Base(firmware), ""); err != nil {
			return nil, err
		}
	}
	if initrd != "" {
		if cfg.Initrd, err = source(initrd, filepath.Base(initrd), ""); err != nil {
			return nil, err
		}
	}
	var timing StageTiming
	if b, err := readBounded(filepath.Join(dir, TimingFile), 4096); err != nil || json.Unmarshal(b, &timing) != nil {
		return nil, fmt.Errorf("boot stage output %s: missing or malformed (%v)", TimingFile, err)
	}
	signStart := time.Now()
	sum, err := writeArtifact(ctx, dir, r.Output.Path, r.Machine.Memory, spec.Disks, cfg, key)
	if err != nil {
		return nil, err
	}
	// The boot's console logs go beside the artifact, once it exists: a
	// failed build leaves nothing there (its error quotes the console).
	for _, c := range stageConsoles {
		if kept, err := keepConsole(filepath.Join(dir, c.file), r.Output.Path+c.suffix); err != nil {
			return nil, err
		} else if kept {
			p.step("boot console log: %s", r.Output.Path+c.suffix)
		}
	}
	p.step("signed with key %s: manifest %s", snapshots.KeyID(key.Public().(ed25519.PublicKey)), sum.Manifest)
	p.step("%d MiB of blobs for %d MiB of guest memory (%d MiB non-zero; %d chunks, %d raw)",
		sum.Bytes>>20, sum.MemoryBytes>>20, sum.StoredPages*snapshots.PageSize>>20, sum.Chunks, sum.RawChunks)
	res := &Result{Path: r.Output.Path, Digest: sum.Manifest.String(), Stage: timing, Sign: time.Since(signStart), Total: time.Since(start), Artifact: sum}
	p.done("built %s in %v (boot %v, capture %v, sign %v)", r.Output.Path, res.Total.Round(time.Millisecond),
		timing.Boot.Round(time.Millisecond), timing.Capture.Round(time.Millisecond), res.Sign.Round(time.Millisecond))
	return res, nil
}

// source identifies a build input by its contents.
func source(path, name, release string) (*snapshots.Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, err := digest.SHA256.FromReader(f)
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	return &snapshots.Source{Name: name, Release: release, Digest: d}, nil
}

// kernelRelease returns the version string of a bzImage, or "".
func kernelRelease(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h, err := linux.ParseHeader(f)
	if err != nil {
		return ""
	}
	return h.KernelVersion
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

// consoleTail returns the end of the stage's console logs, for errors:
// the guest's console, and the other one if it wrote anything.
func consoleTail(dir string) string {
	var out string
	for _, c := range stageConsoles {
		b, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil || len(b) == 0 {
			continue
		}
		if len(b) > 1500 {
			b = b[len(b)-1500:]
		}
		out += "\nlast " + c.what + " output:\n" + string(b)
	}
	return out
}

// writeArtifact turns the boot stage's output in dir into a signed
// artifact. The stage's files are untrusted: their sizes are checked
// against the recipe before anything is read.
func writeArtifact(ctx context.Context, dir, out string, memSize uint64, disks []StageDisk, cfg snapshots.Config, key ed25519.PrivateKey) (*snapshots.Written, error) {
	stateJSON, err := readBounded(filepath.Join(dir, StateFile), maxStateSize)
	if err != nil {
		return nil, fmt.Errorf("boot stage output: %w", err)
	}
	var st machine.State
	if err := json.Unmarshal(stateJSON, &st); err != nil {
		return nil, fmt.Errorf("boot stage output %s: %w", StateFile, err)
	}
	if st.Memory != memSize || st.CPUs != cfg.VCPUs || len(st.VCPUs) != cfg.VCPUs {
		return nil, fmt.Errorf("boot stage output %s: %d vCPUs and %d bytes of memory, the recipe has %d and %d", StateFile, len(st.VCPUs), st.Memory, cfg.VCPUs, memSize)
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("boot stage output %s: %w", StateFile, err)
	}
	for _, e := range st.VCPUs[0].CPUID {
		cfg.CPUID = append(cfg.CPUID, snapshots.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags,
			EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX})
	}
	c := snapshots.Contents{Config: cfg}
	if c.VCPUState, c.DeviceState, err = st.MarshalLayers(); err != nil {
		return nil, err
	}
	for i, r := range memory.Regions(memSize) {
		data, unmap, err := mapFile(filepath.Join(dir, fmt.Sprintf(memoryFile, i)), r.Size)
		if err != nil {
			return nil, fmt.Errorf("boot stage output: %w", err)
		}
		defer unmap()
		c.Memory = append(c.Memory, snapshots.MemRegion{GPA: r.GPA, Data: data})
	}
	for _, d := range disks {
		f, err := os.Open(filepath.Join(dir, d.File))
		if err != nil {
			return nil, fmt.Errorf("boot stage output: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("boot stage output: disk %s is not a regular file", d.File)
		}
		c.Disks = append(c.Disks, snapshots.DiskImage{Disk: snapshots.Disk{ID: d.ID, Size: uint64(st.Size()), ReadOnly: d.ReadOnly}, File: f})
	}
	return snapshots.Write(ctx, out, c, key)
}

// makeDisks makes the recipe's disks in the stage directory: copies of
// given images (the files themselves are never written) and new FAT32
// disks.
func makeDisks(dir string, r *recipe.Recipe, p *progress) ([]StageDisk, error) {
	var out []StageDisk
	for i, d := range r.Machine.Disks {
		name := fmt.Sprintf("disk-%d.img", i)
		path := filepath.Join(dir, name)
		key := fmt.Sprintf("machine.disks[%d]", i)
		if d.Image != "" {
			if err := diskimage.Copy(path, d.Image); err != nil {
				return nil, fmt.Errorf("%v: %w", r.Pos(key+".image"), err)
			}
			p.step("disk %s: a copy of %s", d.ID, d.Image)
		} else {
			if err := diskimage.NewFAT32(path, d.Size, strings.ToUpper(d.ID)); err != nil {
				return nil, fmt.Errorf("%v: %w", r.Pos(key+".size"), err)
			}
			p.step("disk %s: new, %d MiB, MBR with one FAT32 partition", d.ID, d.Size>>20)
		}
		out = append(out, StageDisk{File: name, ID: d.ID, ReadOnly: d.ReadOnly})
	}
	return out, nil
}

// stageConsoles are the boot stage's console logs: the guest's console
// and the other one; what errors call them, and the suffix of the copy a
// build keeps beside the artifact.
var stageConsoles = []struct{ file, what, suffix string }{
	{ConsoleFile, "console", ConsoleLogSuffix},
	{OtherConsoleFile, "other console", OtherConsoleLogSuffix},
}

// ConsoleLogSuffix names the copy of the boot's console log a build
// keeps next to the artifact, ARTIFACT.console.log: the output of the
// guest's /dev/console. OtherConsoleLogSuffix names the other console's,
// when it wrote anything: with console=ttyS0 console=hvc0, the serial
// port's, where firmware and a boot loader print.
const (
	ConsoleLogSuffix      = ".console.log"
	OtherConsoleLogSuffix = ".console-other.log"
)

// keepConsole copies a console log of the stage to path, for a person to
// read what the boot printed, unless it is missing or empty.
func keepConsole(log, path string) (bool, error) {
	f, err := os.Open(log)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("boot stage console log: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() == 0 {
		return false, err
	}
	return true, fsutil.WriteFile(path, 0o644, func(w io.Writer) error {
		_, err := io.Copy(w, io.LimitReader(f, maxConsoleLog))
		return err
	})
}

// maxConsoleLog bounds the console log a build keeps: its first 64 MiB.
const maxConsoleLog = 64 << 20

// bootDiskID is the ID of the disk a firmware boot boots from, which the
// build makes or copies; it is the machine's first disk.
const bootDiskID = "boot"

// checkBootDisk checks that the boot disk of a firmware boot fits
// beside the recipe's disks.
func checkBootDisk(r *recipe.Recipe) error {
	if !r.Guest.FirmwareBoot() {
		return nil
	}
	if n := len(r.Machine.Disks); n >= recipe.MaxDisks {
		return r.Errorf("machine.disks", "%d disks, and the boot disk makes %d: at most %d", n, n+1, recipe.MaxDisks)
	}
	for i, d := range r.Machine.Disks {
		if d.ID == bootDiskID {
			return r.Errorf(fmt.Sprintf("machine.disks[%d].id", i), "id %q is the boot disk's", bootDiskID)
		}
	}
	return nil
}

// bootProfile is the profile the recipe's guest boots on.
func bootProfile(r *recipe.Recipe) inventory.Profile {
	if r.Guest.FirmwareBoot() {
		return inventory.FullFirmware
	}
	return inventory.Full
}

// makeBootDisk makes the disk a firmware boot boots from, in dir: a copy
// of guest.disk, or a new disk with the kernel, the initrd and the boot
// loader.
func makeBootDisk(ctx context.Context, dir string, r *recipe.Recipe, kernel, initrd string, p *progress) (StageDisk, error) {
	const name = "boot.img"
	path := filepath.Join(dir, name)
	if r.Guest.Disk != "" {
		if err := diskimage.Copy(path, r.Guest.Disk); err != nil {
			return StageDisk{}, fmt.Errorf("%v: %w", r.Pos("guest.disk"), err)
		}
		p.step("boot disk: a copy of %s", r.Guest.Disk)
		return StageDisk{File: name, ID: bootDiskID}, nil
	}
	files := []diskimage.File{{Name: "vmlinuz", Path: kernel}}
	initrdName := ""
	if initrd != "" {
		initrdName = "initrd.img"
		files = append(files, diskimage.File{Name: initrdName, Path: initrd})
	}
	cfg, err := diskimage.SyslinuxConfig("vmlinuz", initrdName, r.Guest.Cmdline)
	if err != nil {
		return StageDisk{}, fmt.Errorf("%v: %w", r.Pos("guest.cmdline"), err)
	}
	spec := diskimage.SyslinuxSpec{Size: r.Guest.BootDiskSize, Label: "BOOT", Files: files, Config: cfg}
	if err := diskimage.NewSyslinux(ctx, path, spec); err != nil {
		return StageDisk{}, fmt.Errorf("%v: boot disk: %w", r.Pos("guest.bootloader"), err)
	}
	p.step("boot disk: new, %d MiB, MBR with syslinux, one FAT32 partition with the kernel and initrd", spec.Size>>20)
	return StageDisk{File: name, ID: bootDiskID}, nil
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
