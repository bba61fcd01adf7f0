package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

// randomFile writes n pseudo-random bytes to a new file in dir.
func randomFile(t *testing.T, dir, name string, n int, seed uint64) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// TestNewSyslinux builds a disk with Debian's syslinux (setup-debian
// installs it; without it the test fails and says what to install) and
// checks each layer a BIOS boot goes through.
func TestNewSyslinux(t *testing.T) {
	dir := t.TempDir()
	kernel, kernelData := randomFile(t, dir, "bzImage", 3<<20+123, 1)
	initrd, initrdData := randomFile(t, dir, "initrd.cpio", 1<<20+7, 2)
	cfg, err := SyslinuxConfig("vmlinuz", "/boot/initrd.img", "console=ttyS0 panic=-1")
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "boot.img")
	const size = 64 << 20
	err = NewSyslinux(context.Background(), img, SyslinuxSpec{Size: size, Label: "BOOT", Config: cfg,
		Files: []File{{Name: "vmlinuz", Path: kernel}, {Name: "boot/initrd.img", Path: initrd}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != size {
		t.Fatalf("image is %d bytes, want %d", len(raw), size)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("the directory holds %d files, want 3 (no temporary file left)", len(entries))
	}

	// Sector 0: syslinux's MBR code, then the partition table, intact.
	code, err := os.ReadFile(syslinuxMBR)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[:len(code)], code) {
		t.Error("sector 0 does not start with mbr.bin")
	}
	if raw[510] != 0x55 || raw[511] != 0xaa {
		t.Errorf("MBR signature %#x %#x", raw[510], raw[511])
	}
	if raw[446] != 0x80 {
		t.Errorf("partition 1's status byte %#x, want 0x80 (active)", raw[446])
	}
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	tbl := pt.(*mbr.Table)
	var used []*mbr.Partition
	for _, p := range tbl.Partitions {
		if p.Type != mbr.Empty {
			used = append(used, p)
		}
	}
	if len(used) != 1 {
		t.Fatalf("%d partitions, want 1", len(used))
	}
	if p := used[0]; !p.Bootable || p.Type != mbr.Fat32LBA || p.Start != firstSector || uint64(p.Start+p.Size)*sectorSize != size {
		t.Errorf("partition %+v", p)
	}

	// The partition's boot sector: syslinux's, with the partition's
	// start as its hidden sectors, and the backup the same.
	bs := raw[firstSector*sectorSize:][:sectorSize]
	if string(bs[3:11]) != "SYSLINUX" || !bytes.Contains(bs, []byte("Boot error")) || bs[510] != 0x55 || bs[511] != 0xaa {
		t.Errorf("the partition's boot sector is not syslinux's: %q", bs)
	}
	if h := binary.LittleEndian.Uint32(bs[0x1c:]); h != firstSector {
		t.Errorf("hidden sectors %d, want %d", h, firstSector)
	}
	if backup := raw[(firstSector+6)*sectorSize:][:sectorSize]; !bytes.Equal(backup, bs) {
		t.Error("the backup boot sector differs")
	}

	// The filesystem, read back with go-diskfs.
	fs, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{
		"vmlinuz":                        kernelData,
		"boot/initrd.img":                initrdData,
		"syslinux/" + SyslinuxConfigName: []byte(cfg),
	} {
		got, err := fs.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (%v), want %d", name, len(got), err, len(want))
		}
	}
	for _, name := range []string{"syslinux/ldlinux.sys", "syslinux/ldlinux.c32"} {
		if got, err := fs.ReadFile(name); err != nil || len(got) < 4096 {
			t.Errorf("%s: %d bytes (%v)", name, len(got), err)
		}
	}
	if sys, err := fs.ReadFile("syslinux/ldlinux.sys"); err == nil && !bytes.Contains(sys, []byte("SYSLINUX ")) {
		t.Error("ldlinux.sys has no SYSLINUX banner")
	}

	// dosfstools' checker finds nothing to fix.
	fsck, err := exec.LookPath("fsck.fat")
	if err != nil {
		t.Fatal("fsck.fat not found: install the Debian package dosfstools")
	}
	part := filepath.Join(t.TempDir(), "part.img")
	if err := ExtractPartition(part, img, 1); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(fsck, "-n", part).CombinedOutput()
	if err != nil {
		t.Errorf("fsck.fat: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case strings.HasPrefix(line, "fsck.fat "), strings.HasPrefix(line, part+": "),
			// FSInfo's free count is "unknown", as go-diskfs writes it.
			strings.HasPrefix(line, "Free cluster summary uninitialized"):
		default:
			t.Errorf("fsck.fat: %s", line)
		}
	}
}

func TestNewSyslinuxErrors(t *testing.T) {
	dir := t.TempDir()
	kernel, _ := randomFile(t, dir, "bzImage", 4096, 1)
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, MinFAT32); err != nil { // sparse
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.img")
	if err := os.WriteFile(existing, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := SyslinuxConfig("vmlinuz", "", "")
	if err != nil {
		t.Fatal(err)
	}
	ok := SyslinuxSpec{Size: MinFAT32, Label: "BOOT", Config: cfg, Files: []File{{Name: "vmlinuz", Path: kernel}}}
	for _, tc := range []struct {
		name string
		path string // default: new.img in dir
		edit func(*SyslinuxSpec)
		want string
	}{
		{"missing file", "", func(s *SyslinuxSpec) { s.Files[0].Path = filepath.Join(dir, "nope") }, "file vmlinuz: stat " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"directory for a file", "", func(s *SyslinuxSpec) { s.Files[0].Path = dir }, "is not a regular file"},
		{"too small", "", func(s *SyslinuxSpec) { s.Files = append(s.Files, File{Name: "big", Path: big}) },
			"the files (40.0 MiB) and syslinux (1.0 MiB) need 41.0 MiB; the FAT32 partition of a 40.0 MiB disk holds"},
		{"size not a FAT32 disk", "", func(s *SyslinuxSpec) { s.Size = 8 << 20 }, "must be a multiple of 512 from"},
		{"existing destination", existing, nil, "exists"},
		{"no config", "", func(s *SyslinuxSpec) { s.Config = " \n" }, "no syslinux.cfg"},
		{"absolute name", "", func(s *SyslinuxSpec) { s.Files[0].Name = "/vmlinuz" }, "want a clean path relative"},
		{"dot-dot name", "", func(s *SyslinuxSpec) { s.Files[0].Name = "boot/../vmlinuz" }, "want a clean path relative"},
		{"space in name", "", func(s *SyslinuxSpec) { s.Files[0].Name = "my kernel" }, "want elements of"},
		{"syslinux's name", "", func(s *SyslinuxSpec) { s.Files[0].Name = "LDLINUX.SYS" }, "are syslinux's"},
		{"syslinux's directory", "", func(s *SyslinuxSpec) { s.Files[0].Name = "Syslinux/x.cfg" }, "are syslinux's"},
		{"same name on FAT", "", func(s *SyslinuxSpec) { s.Files = append(s.Files, File{Name: "VMLINUZ", Path: kernel}) }, `"vmlinuz" and "VMLINUZ" are the same on FAT`},
		{"file and directory", "", func(s *SyslinuxSpec) { s.Files = append(s.Files, File{Name: "vmlinuz/x", Path: kernel}) }, `"vmlinuz" is a file and the directory of "vmlinuz/x"`},
		{"@@ in path", filepath.Join(dir, "a@@1.img"), nil, "@@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := ok
			spec.Files = append([]File(nil), ok.Files...)
			if tc.edit != nil {
				tc.edit(&spec)
			}
			path := tc.path
			if path == "" {
				path = filepath.Join(dir, "new.img")
			}
			err := NewSyslinux(context.Background(), path, spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewSyslinux = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if got, err := os.ReadFile(existing); err != nil || string(got) != "mine" {
		t.Errorf("the existing file was changed: %q, %v", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("%d files left in the directory, want 3", len(entries))
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := NewSyslinux(ctx, filepath.Join(dir, "new.img"), ok); !errors.Is(err, context.Canceled) {
		t.Errorf("NewSyslinux with a cancelled context = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "new.img")); err == nil {
		t.Error("a cancelled build left its image")
	}
}

// TestSyslinuxMissingTools checks that NewSyslinux names what to install.
func TestSyslinuxMissingTools(t *testing.T) {
	kernel, _ := randomFile(t, t.TempDir(), "bzImage", 4096, 1)
	spec := SyslinuxSpec{Size: MinFAT32, Config: "DEFAULT x\n", Files: []File{{Name: "vmlinuz", Path: kernel}}}
	for _, tc := range []struct {
		name string
		v    *string
		want string
	}{
		{"installer", &syslinuxInstaller, "bunkerbuild-missing not found: install the Debian packages syslinux, syslinux-common and mtools"},
		{"mtools", &mtoolsCommands[0], "bunkerbuild-missing (mtools) not found: install the Debian packages syslinux, syslinux-common and mtools"},
		{"mbr.bin", &syslinuxMBR, "syslinux's MBR boot code: open /bunkerbuild-missing: no such file or directory: install the Debian packages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := *tc.v
			defer func() { *tc.v = old }()
			*tc.v = "bunkerbuild-missing"
			if tc.v == &syslinuxMBR {
				*tc.v = "/bunkerbuild-missing"
			}
			path := filepath.Join(t.TempDir(), "x.img")
			err := NewSyslinux(context.Background(), path, spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewSyslinux = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSyslinuxConfig(t *testing.T) {
	got, err := SyslinuxConfig("/vmlinuz", "boot/initrd.img", "console=ttyS0 root=/dev/vda1 quiet")
	if err != nil {
		t.Fatal(err)
	}
	want := `SERIAL 0 115200
PROMPT 0
NOESCAPE 1
TIMEOUT 1
DEFAULT linux
LABEL linux
  LINUX /vmlinuz
  INITRD /boot/initrd.img
  APPEND console=ttyS0 root=/dev/vda1 quiet
`
	if got != want {
		t.Errorf("SyslinuxConfig:\n%s\nwant:\n%s", got, want)
	}
	got, err = SyslinuxConfig("vmlinuz", "", "")
	if err != nil || strings.Contains(got, "INITRD") || strings.Contains(got, "APPEND") {
		t.Errorf("SyslinuxConfig without initrd and cmdline:\n%s(%v)", got, err)
	}
	if _, err := SyslinuxConfig("vmlinuz", "", strings.Repeat("x", MaxSyslinuxCmdline)); err != nil {
		t.Errorf("a command line of %d bytes: %v", MaxSyslinuxCmdline, err)
	}
	for _, tc := range []struct{ kernel, initrd, cmdline, want string }{
		{"vmlinuz", "", "quiet\nDEFAULT evil", `control character '\n' at byte 5`},
		{"vmlinuz", "", "quiet\rx", `control character '\r'`},
		{"vmlinuz", "", "a\tb", `control character '\t'`},
		{"vmlinuz", "", "a\x00b", `control character '\x00'`},
		{"vmlinuz", "", strings.Repeat("x", MaxSyslinuxCmdline+1), "4001 bytes long; syslinux takes at most 4000"},
		{"vmlinuz", "", "quiet initrd=/other.img", `"initrd=/other.img": syslinux would load it`},
		{"vmlinuz", "", " - ", `"-" means none`},
		{"", "", "", "kernel: empty file name"},
		{"my kernel", "", "", "kernel: file name"},
		{"vmlinuz\nDEFAULT x", "", "", "kernel: file name"},
		{"vmlinuz", "a,b", "", "initrd: file name"},
		{"vmlinuz", "../initrd", "", "initrd: file name"},
		{"syslinux/vmlinuz", "", "", "are syslinux's"},
	} {
		if _, err := SyslinuxConfig(tc.kernel, tc.initrd, tc.cmdline); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SyslinuxConfig(%q, %q, %q) = %v, want an error containing %q", tc.kernel, tc.initrd, tc.cmdline, err, tc.want)
		}
	}
}
