package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
)

// Debian's syslinux 6.04: the installer in the package syslinux is the
// mtools-based one, which writes ldlinux.sys, ldlinux.c32 and the boot
// sector into a FAT filesystem inside an image file at an offset (no loop
// device, no mount); it runs mcopy, mattrib and mmove from mtools. The
// boot code for the MBR comes from syslinux-common. Variables, so that
// tests can name what is missing.
var (
	syslinuxInstaller = "syslinux"
	mtoolsCommands    = []string{"mcopy", "mattrib", "mmove", "mmd"}
	syslinuxMBR       = "/usr/lib/syslinux/mbr/mbr.bin"
)

const (
	// SyslinuxDir is the directory of the filesystem that holds
	// syslinux's files: ldlinux.sys, ldlinux.c32 and syslinux.cfg.
	// Syslinux looks for its configuration first in the directory it was
	// installed in.
	SyslinuxDir = "syslinux"
	// SyslinuxConfigName is the configuration file's name in SyslinuxDir.
	SyslinuxConfigName = "syslinux.cfg"
	// MaxSyslinuxCmdline is the longest kernel command line
	// SyslinuxConfig writes. Syslinux reads its configuration in lines of
	// at most 4095 bytes and takes the rest of a longer line as a line of
	// its own, so a longer APPEND could add directives.
	MaxSyslinuxCmdline = 4000

	// mbrCodeSize is the boot code's part of sector 0, before the disk
	// signature and the partition table.
	mbrCodeSize = 440
	// syslinuxReserve is room kept free for ldlinux.sys, ldlinux.c32,
	// syslinux.cfg and the directories.
	syslinuxReserve = 1 << 20
)

const missingSyslinux = "install the Debian packages syslinux, syslinux-common and mtools"

// SyslinuxSpec describes a legacy BIOS-bootable disk: an MBR with
// syslinux's boot code and one active FAT32 partition holding Files and
// syslinux, which boots as Config says.
type SyslinuxSpec struct {
	// Size is the disk's size in bytes: a multiple of 512 from MinFAT32
	// to 2 TiB.
	Size uint64
	// Label is the FAT volume label.
	Label string
	// Files are copied into the filesystem.
	Files []File
	// Config is the text of syslinux.cfg, such as SyslinuxConfig writes.
	Config string
}

// File is a host file to copy into a disk's filesystem.
type File struct {
	// Name is the file's path in the filesystem, relative to its root and
	// separated by /: vmlinuz, or boot/vmlinuz. Each element is 1 to 255
	// bytes of A-Z, a-z, 0-9, '.', '_', '+' and '-', and not . or ..;
	// syslinux/, ldlinux.sys and ldlinux.c32 in the root are syslinux's
	// (without regard to case, as FAT names).
	Name string
	// Path is the host file to copy, a regular file.
	Path string
}

var validNameElem = regexp.MustCompile(`^[A-Za-z0-9._+-]{1,255}$`)

// checkName checks a File.Name.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty file name")
	}
	if len(name) > 255 || path.IsAbs(name) || path.Clean(name) != name {
		return fmt.Errorf("file name %q: want a clean path relative to the filesystem's root, such as vmlinuz or boot/vmlinuz, of up to 255 bytes", name)
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == "." || elem == ".." || !validNameElem.MatchString(elem) {
			return fmt.Errorf("file name %q: want elements of A-Z, a-z, 0-9, '.', '_', '+' and '-'", name)
		}
	}
	first, _, _ := strings.Cut(strings.ToLower(name), "/")
	if first == SyslinuxDir || first == "ldlinux.sys" || first == "ldlinux.c32" {
		return fmt.Errorf("file name %q: %s/, ldlinux.sys and ldlinux.c32 in the root are syslinux's", name, SyslinuxDir)
	}
	return nil
}

// SyslinuxConfig returns a syslinux.cfg that boots one Linux kernel at
// once, on the serial console COM1 at 115200 baud as well as the screen:
// kernel and initrd are paths in the filesystem (as File.Name; a leading
// / is allowed), initrd may be empty for none, and cmdline is the kernel
// command line. The command line cannot hold a control character (a
// newline would start a directive of its own), be longer than
// MaxSyslinuxCmdline, name an initrd= (syslinux would load it), or be "-"
// (syslinux's word for none).
func SyslinuxConfig(kernel, initrd, cmdline string) (string, error) {
	if err := CheckSyslinuxCmdline(cmdline); err != nil {
		return "", err
	}
	var b strings.Builder
	// SERIAL comes first, so that everything syslinux writes reaches the
	// serial console. PROMPT 0 boots DEFAULT without a prompt; NOESCAPE 1
	// ignores Shift, Alt, Caps Lock and Scroll Lock, which would force
	// one; and TIMEOUT 1 ends any prompt after 0.1s.
	b.WriteString("SERIAL 0 115200\nPROMPT 0\nNOESCAPE 1\nTIMEOUT 1\nDEFAULT linux\nLABEL linux\n")
	k := strings.TrimPrefix(kernel, "/")
	if err := checkName(k); err != nil {
		return "", fmt.Errorf("kernel: %w", err)
	}
	fmt.Fprintf(&b, "  LINUX /%s\n", k)
	if initrd != "" {
		i := strings.TrimPrefix(initrd, "/")
		if err := checkName(i); err != nil {
			return "", fmt.Errorf("initrd: %w", err)
		}
		fmt.Fprintf(&b, "  INITRD /%s\n", i)
	}
	if cmdline != "" {
		fmt.Fprintf(&b, "  APPEND %s\n", cmdline)
	}
	return b.String(), nil
}

// CheckSyslinuxCmdline checks that SyslinuxConfig can pass cmdline to the
// kernel as it is (see SyslinuxConfig).
func CheckSyslinuxCmdline(cmdline string) error {
	if len(cmdline) > MaxSyslinuxCmdline {
		return fmt.Errorf("kernel command line: %d bytes long; syslinux takes at most %d", len(cmdline), MaxSyslinuxCmdline)
	}
	if i := strings.IndexFunc(cmdline, func(r rune) bool { return r < ' ' || r == 0x7f }); i >= 0 {
		return fmt.Errorf("kernel command line: control character %q at byte %d; syslinux.cfg holds it on one line", cmdline[i], i)
	}
	for _, word := range strings.Fields(cmdline) {
		if strings.HasPrefix(word, "initrd=") {
			return fmt.Errorf("kernel command line: %q: syslinux would load it; give the initrd on its own", word)
		}
	}
	if strings.TrimSpace(cmdline) == "-" {
		return errors.New(`kernel command line: "-" means none to syslinux`)
	}
	return nil
}

// NewSyslinux makes a legacy BIOS-bootable disk of spec.Size bytes at
// path, which must not exist: an MBR holding syslinux-common's mbr.bin
// and one active FAT32 (LBA) partition from 1 MiB to the end, labelled
// spec.Label, holding spec.Files, syslinux.cfg (spec.Config) in
// SyslinuxDir, and syslinux, installed there by Debian's installer:
//
//	syslinux --install --offset 1048576 --directory /syslinux IMAGE
//
// The BIOS runs mbr.bin, which runs the active partition's boot sector,
// which loads ldlinux.sys, which reads /syslinux/syslinux.cfg.
func NewSyslinux(ctx context.Context, path string, spec SyslinuxSpec) error {
	if err := checkSize(path, spec.Size); err != nil {
		return err
	}
	if strings.Contains(path, "@@") {
		// mtools would take what follows for an offset.
		return fmt.Errorf("disk image %s: mtools cannot name a path holding @@", path)
	}
	if strings.TrimSpace(spec.Config) == "" {
		return fmt.Errorf("disk image %s: no syslinux.cfg: syslinux would stop at its boot: prompt", path)
	}
	installer, mbrCode, err := syslinuxTools()
	if err != nil {
		return fmt.Errorf("disk image %s: %w", path, err)
	}
	sizes, err := checkFiles(spec.Files)
	if err != nil {
		return fmt.Errorf("disk image %s: %w", path, err)
	}
	return create(path, func(tmp string) error {
		if err := fillSyslinux(ctx, tmp, spec, sizes); err != nil {
			return err
		}
		args := []string{"--install", "--offset", fmt.Sprint(firstSector * sectorSize), "--directory", "/" + SyslinuxDir, tmp}
		cmd := exec.CommandContext(ctx, installer, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s %s: %w: %s", installer, strings.Join(args[:len(args)-1], " "), err, bytes.TrimSpace(out.Bytes()))
		}
		f, err := os.OpenFile(tmp, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := finishBootSector(f); err != nil {
			return fmt.Errorf("after %s: %w", installer, err)
		}
		// Only the boot code: the disk signature and the partition
		// table after it stay.
		if _, err := f.WriteAt(mbrCode, 0); err != nil {
			return err
		}
		return f.Sync()
	})
}

// syslinuxTools returns the installer's path and the MBR boot code, or an
// error naming what is missing.
func syslinuxTools() (string, []byte, error) {
	installer, err := exec.LookPath(syslinuxInstaller)
	if err != nil {
		return "", nil, fmt.Errorf("%s not found: %s", syslinuxInstaller, missingSyslinux)
	}
	for _, c := range mtoolsCommands {
		if _, err := exec.LookPath(c); err != nil {
			return "", nil, fmt.Errorf("%s (mtools) not found: %s", c, missingSyslinux)
		}
	}
	code, err := os.ReadFile(syslinuxMBR)
	if err != nil {
		return "", nil, fmt.Errorf("syslinux's MBR boot code: %w: %s", err, missingSyslinux)
	}
	if len(code) == 0 || len(code) > mbrCodeSize {
		return "", nil, fmt.Errorf("syslinux's MBR boot code %s: %d bytes, want 1 to %d", syslinuxMBR, len(code), mbrCodeSize)
	}
	return installer, code, nil
}

// checkFiles checks the names and host files of files and returns the
// files' sizes.
func checkFiles(files []File) ([]int64, error) {
	sizes := make([]int64, len(files))
	seen := map[string]string{}
	for i, f := range files {
		if err := checkName(f.Name); err != nil {
			return nil, err
		}
		// FAT compares names without case, and a name cannot be both a
		// file and a directory.
		lower := strings.ToLower(f.Name)
		if other, dup := seen[lower]; dup {
			return nil, fmt.Errorf("file names %q and %q are the same on FAT", other, f.Name)
		}
		seen[lower] = f.Name
		st, err := os.Stat(f.Path)
		if err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Name, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("file %s: %s is not a regular file (%v)", f.Name, f.Path, st.Mode().Type())
		}
		if st.Size() > math.MaxUint32 {
			return nil, fmt.Errorf("file %s: %s is %d bytes; a FAT32 file is less than 4 GiB", f.Name, f.Path, st.Size())
		}
		sizes[i] = st.Size()
	}
	for _, f := range files {
		for dir := path.Dir(f.Name); dir != "."; dir = path.Dir(dir) {
			if other, ok := seen[strings.ToLower(dir)]; ok {
				return nil, fmt.Errorf("%q is a file and the directory of %q", other, f.Name)
			}
		}
	}
	return sizes, nil
}

// fillSyslinux makes the disk at tmp with go-diskfs and copies in the
// files and syslinux.cfg.
func fillSyslinux(ctx context.Context, tmp string, spec SyslinuxSpec, sizes []int64) error {
	d, err := diskfs.Create(tmp, int64(spec.Size), diskfs.SectorSize512)
	if err != nil {
		return err
	}
	err = format(d, spec.Size, spec.Label, true)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := checkRoom(tmp, spec.Size, sizes); err != nil {
		return err
	}
	// mtools makes the directories: go-diskfs 1.9.4 gives a directory in
	// the root a ".." entry pointing at the root's cluster, where FAT
	// wants 0, and fsck.fat objects.
	if err := mkdirs(ctx, tmp, spec.Files); err != nil {
		return err
	}
	d, err = diskfs.Open(tmp)
	if err != nil {
		return err
	}
	err = copyFiles(ctx, d, spec)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// copyFiles copies spec's files and syslinux.cfg into the filesystem of d,
// whose directories exist.
func copyFiles(ctx context.Context, d *disk.Disk, spec SyslinuxSpec) error {
	fs, err := d.GetFilesystem(1)
	if err != nil {
		return err
	}
	for _, f := range spec.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		in, err := os.Open(f.Path)
		if err != nil {
			return fmt.Errorf("file %s: %w", f.Name, err)
		}
		err = writeFile(fs, f.Name, in)
		in.Close()
		if err != nil {
			return err
		}
	}
	return writeFile(fs, SyslinuxDir+"/"+SyslinuxConfigName, strings.NewReader(spec.Config))
}

// mkdirs makes SyslinuxDir and the directories of files in the FAT32
// filesystem of the image tmp, with mtools' mmd.
func mkdirs(ctx context.Context, tmp string, files []File) error {
	dirs := []string{SyslinuxDir}
	seen := map[string]bool{}
	for _, f := range files {
		var parents []string
		for dir := path.Dir(f.Name); dir != "." && !seen[strings.ToLower(dir)]; dir = path.Dir(dir) {
			seen[strings.ToLower(dir)] = true
			parents = append(parents, dir)
		}
		slices.Reverse(parents)
		dirs = append(dirs, parents...)
	}
	args := []string{"-i", fmt.Sprintf("%s@@%d", tmp, firstSector*sectorSize)}
	for _, dir := range dirs {
		args = append(args, "::/"+dir)
	}
	return mtools(ctx, "mmd", args...)
}

// mtools runs one of mtools' commands.
func mtools(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	// Our geometry (one head, one sector a track) is not a floppy's.
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// writeFile writes r to name in fs, whose directory exists.
func writeFile(fs filesystem.FileSystem, name string, r io.Reader) error {
	out, err := fs.OpenFile("/"+name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create /%s: %w", name, err)
	}
	// go-diskfs finds and writes the file's clusters and the FAT on each
	// Write: few large ones are much faster than many small ones.
	_, err = io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{r}, make([]byte, 16<<20))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write /%s: %w", name, err)
	}
	return nil
}

// checkRoom checks that the FAT32 filesystem just made at firstSector of
// the image tmp has room for files of sizes and syslinux. go-diskfs finds
// out only part way, and can give clusters past the end of a full one.
func checkRoom(tmp string, size uint64, sizes []int64) error {
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	var bs [sectorSize]byte
	if _, err := f.ReadAt(bs[:], firstSector*sectorSize); err != nil {
		return fmt.Errorf("FAT32 boot sector: %w", err)
	}
	le := binary.LittleEndian
	bytesPerSector, sectorsPerCluster := int64(le.Uint16(bs[0x0b:])), int64(bs[0x0d])
	reserved, fats := int64(le.Uint16(bs[0x0e:])), int64(bs[0x10])
	total, perFAT := int64(le.Uint32(bs[0x20:])), int64(le.Uint32(bs[0x24:]))
	clusterBytes := bytesPerSector * sectorsPerCluster
	if clusterBytes == 0 || total <= reserved+fats*perFAT {
		return fmt.Errorf("FAT32 boot sector: unexpected geometry")
	}
	free := (total-reserved-fats*perFAT)/sectorsPerCluster - 1 // the root directory
	need := int64(syslinuxReserve / clusterBytes)
	var bytes int64
	for _, s := range sizes {
		need += max(1, (s+clusterBytes-1)/clusterBytes)
		bytes += s
	}
	if need > free {
		return fmt.Errorf("the files (%s) and syslinux (%s) need %s; the FAT32 partition of a %s disk holds %s",
			mib(bytes), mib(syslinuxReserve), mib(need*clusterBytes), mib(int64(size)), mib(free*clusterBytes))
	}
	return nil
}

// mib formats a byte count in MiB.
func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// finishBootSector checks that the partition's boot sector is the one
// syslinux installed, sets its count of hidden sectors (the sectors
// before the partition, which go-diskfs leaves 0; syslinux's boot sector
// takes the partition's start from the MBR but falls back on it), and
// copies it to the backup boot sector, which syslinux leaves as it was.
func finishBootSector(f *os.File) error {
	const start = firstSector * sectorSize
	var bs [sectorSize]byte
	if _, err := f.ReadAt(bs[:], start); err != nil {
		return err
	}
	if string(bs[3:11]) != "SYSLINUX" || bs[510] != 0x55 || bs[511] != 0xaa {
		return errors.New("the partition's boot sector is not syslinux's")
	}
	le := binary.LittleEndian
	le.PutUint32(bs[0x1c:], firstSector)
	if _, err := f.WriteAt(bs[:], start); err != nil {
		return err
	}
	if backup := int64(le.Uint16(bs[0x32:])); backup != 0 && backup != 0xffff {
		if backup >= int64(le.Uint16(bs[0x0e:])) {
			return fmt.Errorf("FAT32 boot sector: backup boot sector %d is not among the reserved sectors", backup)
		}
		if _, err := f.WriteAt(bs[:], start+backup*sectorSize); err != nil {
			return err
		}
	}
	return nil
}
