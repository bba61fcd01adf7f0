package recipe

import (
	"errors"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"regexp/syntax"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/diskimage"
)

// base is a valid recipe; cases edit it line by line, so the line numbers
// below stay put unless a case inserts lines.
const base = `apiVersion: bunkerbuild/v1
name: test
guest:
  kernel: default
  initrd: default
  cmdline: console=ttyS0
machine:
  memory: 512M
  cpus: 2
booted:
  console: 'cpus=\d+'
  timeout: 5m
output:
  path: out.bbsnap
  signing-key: key
`

// edit replaces the one line of base that is old with new (which may hold
// several lines, or none: then the line is removed).
func edit(t *testing.T, old, new string) string {
	t.Helper()
	lines := strings.SplitAfter(base, "\n")
	n := 0
	for i, l := range lines {
		if strings.TrimSuffix(l, "\n") == old {
			lines[i] = new + "\n"
			if new == "" {
				lines[i] = ""
			}
			n++
		}
	}
	if n != 1 {
		t.Fatalf("edit: %d lines of base are %q, want 1", n, old)
	}
	return strings.Join(lines, "")
}

func TestParseValid(t *testing.T) {
	dir, err := filepath.Abs("recipes")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse("recipes/test.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	want := Recipe{
		File:       "recipes/test.yaml",
		Dir:        dir,
		APIVersion: APIVersion,
		Name:       "test",
		Guest:      Guest{Kernel: Default, Initrd: Default, Cmdline: "console=ttyS0"},
		Machine:    Machine{Memory: 512 << 20, CPUs: 2, Profile: ProfileFull, Serial: true},
		Booted:     Booted{Timeout: 5 * time.Minute},
		Output:     Output{Path: filepath.Join(dir, "out.bbsnap"), SigningKey: filepath.Join(dir, "key")},
	}
	if r.Booted.Console == nil || r.Booted.Console.String() != `cpus=\d+` {
		t.Errorf("Booted.Console = %v, want cpus=\\d+", r.Booted.Console)
	}
	got := *r
	got.Booted.Console, got.Positions = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
	}
	for key, want := range map[string]string{
		"":               "recipes/test.yaml:1:1",
		"name":           "recipes/test.yaml:2:7",
		"guest":          "recipes/test.yaml:3:1",
		"machine.memory": "recipes/test.yaml:8:11",
		"booted.console": "recipes/test.yaml:11:12",
		"booted.settle":  "recipes/test.yaml:10:1", // not given: its section
	} {
		if got := r.Pos(key).String(); got != want {
			t.Errorf("Pos(%q) = %s, want %s", key, got, want)
		}
	}
}

// guestBlock replaces base's guest section with g.
func guestBlock(g string) string {
	return strings.Replace(base, "guest:\n  kernel: default\n  initrd: default\n  cmdline: console=ttyS0\n", g, 1)
}

// firmwareFile writes a file of n bytes (sparse) to dir and returns its path.
func firmwareFile(t *testing.T, dir, name string, n int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, n); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseValidVariants(t *testing.T) {
	abs := t.TempDir()
	bios := firmwareFile(t, abs, "bios.bin", 256<<10)
	biosMax := firmwareFile(t, abs, "big.bin", MaxFirmwareSize)
	for _, tc := range []struct {
		name, yaml string
		check      func(*Recipe) bool
	}{
		{"disk guest", strings.Replace(edit(t, "  kernel: default", "  disk: images/dos.img"), "  initrd: default\n  cmdline: console=ttyS0\n", "", 1),
			func(r *Recipe) bool {
				return r.Guest == Guest{Disk: filepath.Join(r.Dir, "images", "dos.img"), Firmware: Default} && r.Guest.FirmwareBoot()
			}},
		{"kernel and initrd files", edit(t, "  initrd: default", "  initrd: ../guest/initrd.cpio"),
			func(r *Recipe) bool {
				return r.Guest.Initrd == filepath.Join(r.Dir, "..", "guest", "initrd.cpio") && r.Guest.Kernel == Default
			}},
		{"legacy-idle", edit(t, `  console: 'cpus=\d+'`, "  legacy-idle: 5s\n  settle: 0"),
			func(r *Recipe) bool { return r.Booted.LegacyIdle == 5*time.Second && r.Booted.Console == nil }},
		{"guest-signal", edit(t, `  console: 'cpus=\d+'`, "  guest-signal: true\n  settle: 1m30s"),
			func(r *Recipe) bool { return r.Booted.GuestSignal && r.Booted.Settle == 90*time.Second }},
		{"absolute output", edit(t, "  path: out.bbsnap", "  path: "+abs+"/a.bbsnap"),
			func(r *Recipe) bool { return r.Output.Path == abs+"/a.bbsnap" }},
		{"machine spelled out", edit(t, "  cpus: 2", "  cpus: 64\n  profile: full\n  serial: true"),
			func(r *Recipe) bool { return r.Machine.CPUs == 64 && r.Machine.Serial }},
		{"no serial without console", strings.Replace(edit(t, `  console: 'cpus=\d+'`, "  legacy-idle: 1s"), "  cpus: 2\n", "  cpus: 2\n  serial: false\n", 1),
			func(r *Recipe) bool { return !r.Machine.Serial }},
		{"bounds", edit(t, "  memory: 512M", "  memory: 64G"), func(r *Recipe) bool { return r.Machine.Memory == 64<<30 }},
		{"lower bounds", edit(t, "  memory: 512M", "  memory: 64MiB"), func(r *Recipe) bool { return r.Machine.Memory == 64<<20 }},
		{"timeout 1h", edit(t, "  timeout: 5m", "  timeout: 1h"), func(r *Recipe) bool { return r.Booted.Timeout == time.Hour }},
		{"flow style and comments", `# comment
apiVersion: "bunkerbuild/v1"   # quoted
name: flow-1
guest: {kernel: vmlinuz, cmdline: ""}
machine: {memory: 1g, cpus: 0x2}
booted: {guest-signal: true, timeout: 90s}
output: {path: /abs/x.bbsnap, signing-key: /abs/k}
`, func(r *Recipe) bool {
			return r.Guest.Kernel == filepath.Join(r.Dir, "vmlinuz") && r.Guest.Initrd == "" && r.Machine.CPUs == 2 && r.Output.Path == "/abs/x.bbsnap"
		}},
		{"disks and nic", edit(t, "  cpus: 2", "  cpus: 2\n  disks:\n    - id: data\n      size: 64M\n    - {id: base-1, image: images/base.img, read-only: true}\n  nic: true"),
			func(r *Recipe) bool {
				return reflect.DeepEqual(r.Machine.Disks, []Disk{{ID: "data", Size: 64 << 20}, {ID: "base-1", Image: filepath.Join(r.Dir, "images", "base.img"), ReadOnly: true}}) && r.Machine.NIC
			}},
		{"document markers", "---\n" + base + "...\n", nil},
		{"anchor without alias", edit(t, "  kernel: default", "  kernel: &k default"), nil},
		{"syslinux", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  bootloader: syslinux"),
			func(r *Recipe) bool {
				return r.Guest == Guest{Kernel: Default, Initrd: Default, Cmdline: "console=ttyS0", Bootloader: BootloaderSyslinux, BootDiskSize: DefaultBootDiskSize, Firmware: Default} &&
					r.Guest.FirmwareBoot()
			}},
		{"syslinux spelled out", guestBlock("guest:\n  kernel: vmlinuz\n  bootloader: syslinux\n  boot-disk-size: 40M\n  firmware: " + bios + "\n"),
			func(r *Recipe) bool {
				return r.Guest == Guest{Kernel: filepath.Join(r.Dir, "vmlinuz"), Bootloader: BootloaderSyslinux, BootDiskSize: 40 << 20, Firmware: bios}
			}},
		{"syslinux, largest disk, largest firmware", edit(t, "  cmdline: console=ttyS0", "  cmdline: "+strings.Repeat("x", MaxBootloaderCmdline)+"\n  bootloader: syslinux\n  boot-disk-size: 1T\n  firmware: "+biosMax),
			func(r *Recipe) bool { return r.Guest.BootDiskSize == 1<<40 && r.Guest.Firmware == biosMax }},
		{"disk with firmware", guestBlock("guest:\n  disk: d.img\n  firmware: " + bios + "\n"),
			func(r *Recipe) bool { return r.Guest == Guest{Disk: filepath.Join(r.Dir, "d.img"), Firmware: bios} }},
		{"disk with default firmware", guestBlock("guest: {disk: d.img, firmware: default}\n"),
			func(r *Recipe) bool { return r.Guest.Firmware == Default && r.Guest.FirmwareBoot() }},
		{"no firmware for a kernel", base, func(r *Recipe) bool {
			return r.Guest.Firmware == "" && !r.Guest.FirmwareBoot() && r.Guest.BootDiskSize == 0
		}},
		{"newline in cmdline without bootloader", edit(t, "  cmdline: console=ttyS0", `  cmdline: "console=ttyS0\ninitrd=x"`), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse("r.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatalf("Parse:\n%v", err)
			}
			if tc.check != nil && !tc.check(r) {
				t.Errorf("Parse = %+v", r)
			}
			if err := r.Validate(); err != nil {
				t.Errorf("Validate after Parse: %v", err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	outDir := t.TempDir()
	fwDir := t.TempDir()
	fwOdd := firmwareFile(t, fwDir, "odd.bin", 100)
	fwEmpty := firmwareFile(t, fwDir, "empty.bin", 0)
	fwBig := firmwareFile(t, fwDir, "big.bin", MaxFirmwareSize+64<<10)
	fwOK := firmwareFile(t, fwDir, "bios.bin", 128<<10)
	syslinux := func(lines string) string {
		return edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  bootloader: syslinux"+lines)
	}
	outFile := filepath.Join(outDir, "old.snap")
	if err := os.WriteFile(outFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, yaml string
		want       []string // the error's lines, exactly
	}{
		// Unknown keys.
		{"unknown key at top level", edit(t, "name: test", "name: test\nnmae: x"),
			[]string{`t.yaml:3:1: unknown key "nmae" at top level (did you mean "name"?)`}},
		{"unknown nested key", edit(t, "  memory: 512M", "  memroy: 512M"), []string{
			`t.yaml:7:1: missing required key "memory" in machine`,
			`t.yaml:8:3: unknown key "memroy" in machine (did you mean "memory"?)`,
		}},
		{"key of another section", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  cpus: 4"),
			[]string{`t.yaml:7:3: unknown key "cpus" in guest (did you mean "cpus" in machine?)`}},
		{"unknown key, nothing close", edit(t, "  timeout: 5m", "  timeout: 5m\n  frobnicate: 1"),
			[]string{`t.yaml:13:3: unknown key "frobnicate" in booted`}},
		{"merge key", edit(t, "  cpus: 2", "  cpus: 2\n  <<: {serial: true}"),
			[]string{`t.yaml:10:3: merge keys (<<) are not supported in machine; write the keys out`}},
		{"non-string key", edit(t, "  cpus: 2", "  cpus: 2\n  1: x"),
			[]string{`t.yaml:10:3: want a key name in machine, got the integer 1`}},

		// Disks.
		{"disks not a list", edit(t, "  cpus: 2", "  cpus: 2\n  disks: data"),
			[]string{`t.yaml:10:10: machine.disks: want a list of disks (- id: ...), got the string "data"`}},
		{"disk key unknown", edit(t, "  cpus: 2", "  cpus: 2\n  disks:\n    - id: a\n      sise: 64M"), []string{
			`t.yaml:11:7: machine.disks[0]: disk 0 needs an image (a raw image file to copy) or a size (a new FAT32 disk)`,
			`t.yaml:12:7: unknown key "sise" in machine.disks (did you mean "size"?)`,
		}},
		{"disk without id, duplicate id", edit(t, "  cpus: 2", "  cpus: 2\n  disks:\n    - size: 64M\n    - {id: a, size: 64M}\n    - {id: a, size: 64M}"), []string{
			`t.yaml:11:7: machine.disks[0]: disk 0 has no id (the serial number the guest sees, such as data)`,
			`t.yaml:13:12: machine.disks[2].id: "a" is also the id of disk 1`,
		}},
		{"disk image and size", edit(t, "  cpus: 2", "  cpus: 2\n  disks:\n    - {id: a, size: 64M, image: x.img}"),
			[]string{`t.yaml:11:21: machine.disks[0].size: give an image or a size, not both`}},
		{"disk too small, bad id", edit(t, "  cpus: 2", "  cpus: 2\n  disks:\n    - {id: A_1, size: 8M}"), []string{
			`t.yaml:11:12: machine.disks[0].id: "A_1": want up to 20 bytes of [a-z0-9-], starting with a letter or digit`,
			`t.yaml:11:23: machine.disks[0].size: 8M is out of range; a new FAT32 disk is 40M to 1024G`,
		}},
		{"too many disks", edit(t, "  cpus: 2", "  cpus: 2\n  disks: [{id: a, size: 64M}, {id: b, size: 64M}, {id: c, size: 64M}, {id: d, size: 64M}, {id: e, size: 64M}]"),
			[]string{`t.yaml:10:3: machine.disks: 5 disks; the machine has 4 virtio-blk slots`}},

		// Wrong types.
		{"string for integer", edit(t, "  cpus: 2", "  cpus: two"),
			[]string{`t.yaml:9:9: machine.cpus: want an integer, got the string "two"`}},
		{"integer for string", edit(t, "name: test", "name: 2024"),
			[]string{`t.yaml:2:7: name: want a string, got the integer 2024 (quote it to make it a string: "2024")`}},
		{"string for boolean", edit(t, "  cpus: 2", "  cpus: 2\n  serial: yes"),
			[]string{`t.yaml:10:11: machine.serial: want true or false, got the string "yes"`}},
		{"float for integer", edit(t, "  cpus: 2", "  cpus: 2.5"),
			[]string{`t.yaml:9:9: machine.cpus: want an integer, got the number 2.5`}},
		{"list for section", strings.Split(base, "output:")[0] + "output: [a]\n",
			[]string{`t.yaml:13:9: output: want a mapping of keys (path, signing-key), got a list`}},
		{"no value", edit(t, "  kernel: default", "  kernel:"),
			[]string{`t.yaml:4:10: guest.kernel: want a string, got no value`}},
		{"mapping for string", edit(t, "  cmdline: console=ttyS0", "  cmdline: {a: b}"),
			[]string{`t.yaml:6:12: guest.cmdline: want a string, got a mapping`}},
		{"alias", edit(t, "  initrd: default", "  initrd: *k"),
			[]string{`t.yaml: YAML syntax: unknown anchor 'k' referenced`}},
		{"alias to anchor", strings.Replace(edit(t, "  initrd: default", "  initrd: *k"), "kernel: default", "kernel: &k default", 1),
			[]string{`t.yaml:5:11: guest.initrd: aliases (*k) are not supported; write the value out`}},

		// Duplicates.
		{"duplicate key", edit(t, "  cpus: 2", "  cpus: 2\n  cpus: 4"),
			[]string{`t.yaml:10:3: duplicate key "cpus" in machine (first at line 9)`}},
		{"duplicate section", base + "name: again\n",
			[]string{`t.yaml:16:1: duplicate key "name" at top level (first at line 2)`}},

		// Booted conditions.
		{"two conditions", edit(t, `  console: 'cpus=\d+'`, "  console: 'cpus=\\d+'\n  legacy-idle: 5s"),
			[]string{`t.yaml:12:16: booted.legacy-idle: a second condition (console, legacy-idle); give exactly one`}},
		{"three conditions", edit(t, `  console: 'cpus=\d+'`, "  guest-signal: true\n  console: 'x'\n  legacy-idle: 5s"),
			[]string{`t.yaml:12:12: booted.console: a second condition (guest-signal, console, legacy-idle); give exactly one`}},
		{"no condition", edit(t, `  console: 'cpus=\d+'`, ""),
			[]string{`t.yaml:10:1: booted: no condition; give one of console, legacy-idle or guest-signal`}},
		{"guest-signal false", edit(t, `  console: 'cpus=\d+'`, "  guest-signal: false"),
			[]string{`t.yaml:11:17: booted.guest-signal: false is not a condition: write guest-signal: true, or give another condition`}},
		{"bad regexp", edit(t, `  console: 'cpus=\d+'`, `  console: 'cpus=(\d+'`),
			[]string{"t.yaml:11:12: booted.console: error parsing regexp: missing closing ): `cpus=(\\d+`"}},
		{"empty regexp", edit(t, `  console: 'cpus=\d+'`, `  console: ""`),
			[]string{"t.yaml:11:12: booted.console: empty pattern: it would match any line"}},
		{"console without serial", edit(t, "  cpus: 2", "  cpus: 2\n  serial: false"),
			[]string{`t.yaml:10:11: machine.serial: false, but booted.console watches the serial console`}},

		// Durations.
		{"bad duration", edit(t, "  timeout: 5m", "  timeout: 5 minutes"),
			[]string{`t.yaml:12:12: booted.timeout: time: unknown unit " minutes" in duration "5 minutes" (want a duration such as 30s, 5m or 1h)`}},
		{"duration without unit", edit(t, "  timeout: 5m", "  timeout: 300"),
			[]string{`t.yaml:12:12: booted.timeout: time: missing unit in duration "300" (want a duration such as 30s, 5m or 1h)`}},
		{"timeout too long", edit(t, "  timeout: 5m", "  timeout: 61m"),
			[]string{`t.yaml:12:12: booted.timeout: 1h1m0s is longer than the maximum 1h0m0s`}},
		{"timeout zero", edit(t, "  timeout: 5m", "  timeout: 0s"),
			[]string{`t.yaml:12:12: booted.timeout: 0s: want a positive duration`}},
		{"timeout not above settle", edit(t, "  timeout: 5m", "  settle: 5m\n  timeout: 5m"),
			[]string{`t.yaml:13:12: booted.timeout: 5m0s must exceed settle (5m0s): it bounds booting and settling together`}},
		{"negative settle", edit(t, "  timeout: 5m", "  timeout: 5m\n  settle: -1s"),
			[]string{`t.yaml:13:11: booted.settle: -1s is negative`}},
		{"legacy-idle too short", edit(t, `  console: 'cpus=\d+'`, "  legacy-idle: 10ms"),
			[]string{`t.yaml:11:16: booted.legacy-idle: 10ms is shorter than the minimum 100ms`}},
		{"legacy-idle beyond timeout", edit(t, `  console: 'cpus=\d+'`, "  legacy-idle: 5m"),
			[]string{`t.yaml:11:16: booted.legacy-idle: 5m0s must be shorter than timeout (5m0s), or the guest can never count as booted`}},

		// Sizes and counts.
		{"bad size", edit(t, "  memory: 512M", "  memory: 512X"),
			[]string{`t.yaml:8:11: machine.memory: size "512X": want a number with an optional K, M, G or T suffix`}},
		{"bare size", edit(t, "  memory: 512M", "  memory: 512"),
			[]string{`t.yaml:8:11: machine.memory: want a size with a unit such as 512M or 2G, got the bare number 512`}},
		{"memory too small", edit(t, "  memory: 512M", "  memory: 32M"),
			[]string{`t.yaml:8:11: machine.memory: 32M is out of range; want 64M to 64G`}},
		{"memory too large", edit(t, "  memory: 512M", "  memory: 65G"),
			[]string{`t.yaml:8:11: machine.memory: 65G is out of range; want 64M to 64G`}},
		{"memory not whole MiB", edit(t, "  memory: 512M", "  memory: 65537K"),
			[]string{`t.yaml:8:11: machine.memory: 65537K is not a whole number of MiB`}},
		{"no cpus", edit(t, "  cpus: 2", "  cpus: 0"),
			[]string{`t.yaml:9:9: machine.cpus: 0 is out of range; want 1 to 64`}},
		{"too many cpus", edit(t, "  cpus: 2", "  cpus: 65"),
			[]string{`t.yaml:9:9: machine.cpus: 65 is out of range; want 1 to 64`}},
		{"huge cpus", edit(t, "  cpus: 2", "  cpus: 99999999999999999999"),
			[]string{`t.yaml:9:9: machine.cpus: want an integer, got the number 99999999999999999999`}},
		{"profile minimal", edit(t, "  cpus: 2", "  cpus: 2\n  profile: minimal"),
			[]string{`t.yaml:10:12: machine.profile: "minimal" is the production device set, which cannot boot a guest; builds boot on "full"`}},
		{"profile unknown", edit(t, "  cpus: 2", "  cpus: 2\n  profile: fast"),
			[]string{`t.yaml:10:12: machine.profile: unknown profile "fast"; builds boot on "full"`}},

		// Required fields.
		{"missing name", edit(t, "name: test", ""),
			[]string{`t.yaml:1:1: missing required key "name" at top level`}},
		{"missing section", strings.Split(base, "output:")[0],
			[]string{`t.yaml:1:1: missing required key "output" at top level`}},
		{"missing nested key", edit(t, "  timeout: 5m", ""),
			[]string{`t.yaml:10:1: missing required key "timeout" in booted`}},
		{"missing several", strings.Replace(edit(t, "  signing-key: key", ""), "name: test\n", "", 1), []string{
			`t.yaml:1:1: missing required key "name" at top level`,
			`t.yaml:12:1: missing required key "signing-key" in output`,
		}},
		{"empty sections", "apiVersion: bunkerbuild/v1\nname: x\nguest: {}\nmachine: {}\nbooted: {}\noutput: {}\n", []string{
			`t.yaml:3:1: guest: give kernel (with optional initrd and cmdline) or disk`,
			`t.yaml:4:1: missing required key "memory" in machine`,
			`t.yaml:4:1: missing required key "cpus" in machine`,
			`t.yaml:5:1: booted: no condition; give one of console, legacy-idle or guest-signal`,
			`t.yaml:5:1: missing required key "timeout" in booted`,
			`t.yaml:6:1: missing required key "path" in output`,
			`t.yaml:6:1: missing required key "signing-key" in output`,
		}},
		{"only apiVersion", "apiVersion: bunkerbuild/v1\n", []string{
			`t.yaml:1:1: missing required key "name" at top level`,
			`t.yaml:1:1: missing required key "guest" at top level`,
			`t.yaml:1:1: missing required key "machine" at top level`,
			`t.yaml:1:1: missing required key "booted" at top level`,
			`t.yaml:1:1: missing required key "output" at top level`,
		}},

		// Names and paths.
		{"bad name", edit(t, "name: test", "name: Test_1"),
			[]string{`t.yaml:2:7: name: "Test_1": want 1 to 63 of a-z, 0-9 and -, starting with a letter or digit`}},
		{"name too long", edit(t, "name: test", "name: "+strings.Repeat("a", 64)),
			[]string{`t.yaml:2:7: name: "` + strings.Repeat("a", 64) + `": want 1 to 63 of a-z, 0-9 and -, starting with a letter or digit`}},
		{"kernel and disk", edit(t, "  cmdline: console=ttyS0", "  disk: d.img"),
			[]string{`t.yaml:6:9: guest.disk: give kernel or disk, not both`}},
		{"disk with initrd and cmdline", edit(t, "  kernel: default", "  disk: d.img"), []string{
			`t.yaml:5:11: guest.initrd: only with kernel: a disk image boots through its own boot loader`,
			`t.yaml:6:12: guest.cmdline: only with kernel: a disk image boots through its own boot loader`,
		}},
		{"default disk", edit(t, "  kernel: default", "  disk: default"), []string{
			`t.yaml:4:9: guest.disk: there is no default disk image; give a path (./default for a file named default)`,
		}},
		{"empty path", edit(t, "  signing-key: key", `  signing-key: ""`),
			[]string{`t.yaml:15:16: output.signing-key: empty path`}},
		{"tilde path", edit(t, "  signing-key: key", "  signing-key: ~/key"),
			[]string{`t.yaml:15:16: output.signing-key: "~/key": ~ is not expanded; give the path relative to the recipe or absolute`}},
		{"output a directory by name", edit(t, "  path: out.bbsnap", "  path: build/"),
			[]string{`t.yaml:14:9: output.path: "build/" names a directory; give the artifact's file name`}},
		{"output an existing directory", edit(t, "  path: out.bbsnap", "  path: "+outDir),
			[]string{`t.yaml:14:9: output.path: ` + outDir + ` is a directory but not an artifact (no oci-layout file); the build replaces only an earlier artifact`}},
		{"output an existing file", edit(t, "  path: out.bbsnap", "  path: "+outFile),
			[]string{`t.yaml:14:9: output.path: ` + outFile + ` exists and is not a directory; an artifact is a directory (an OCI image layout)`}},
		{"output over the key", edit(t, "  path: out.bbsnap", "  path: ./key"),
			[]string{`t.yaml:14:9: output.path: ` + filepath.Join(cwd(t), "key") + ` is also output.signing-key; the artifact would overwrite it`}},
		{"output over the recipe", edit(t, "  path: out.bbsnap", "  path: t.yaml"),
			[]string{`t.yaml:14:9: output.path: ` + filepath.Join(cwd(t), "t.yaml") + ` is also the recipe; the artifact would overwrite it`}},

		// Boot loaders and firmware.
		{"unknown bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  bootloader: grub"),
			[]string{`t.yaml:7:15: guest.bootloader: unknown boot loader "grub"; the one supported is "syslinux"`}},
		{"empty bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  bootloader: ''"),
			[]string{`t.yaml:7:15: guest.bootloader: unknown boot loader ""; the one supported is "syslinux"`}},
		{"bootloader not a string", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  bootloader: true"),
			[]string{`t.yaml:7:15: guest.bootloader: want a string, got the boolean true (quote it to make it a string: "true")`}},
		{"bootloader with disk", guestBlock("guest:\n  disk: d.img\n  bootloader: syslinux\n"),
			[]string{`t.yaml:5:15: guest.bootloader: only with kernel: a disk image boots through its own boot loader`}},
		{"bootloader without kernel", guestBlock("guest:\n  bootloader: syslinux\n"),
			[]string{`t.yaml:3:1: guest: give kernel (with optional initrd and cmdline) or disk`}},
		{"boot-disk-size without bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  boot-disk-size: 64M"),
			[]string{`t.yaml:7:19: guest.boot-disk-size: only with bootloader: the size of the disk the boot loader is installed on`}},
		{"boot-disk-size with a bad bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  bootloader: 1\n  boot-disk-size: 64M"),
			[]string{`t.yaml:7:15: guest.bootloader: want a string, got the integer 1 (quote it to make it a string: "1")`}},
		{"boot-disk-size too small", syslinux("\n  boot-disk-size: 39M"),
			[]string{`t.yaml:8:19: guest.boot-disk-size: 39M is out of range; a boot disk is 40M to 1024G`}},
		{"boot-disk-size zero", syslinux("\n  boot-disk-size: 0M"),
			[]string{`t.yaml:8:19: guest.boot-disk-size: 0 bytes is out of range; a boot disk is 40M to 1024G`}},
		{"boot-disk-size too large", syslinux("\n  boot-disk-size: 2T"),
			[]string{`t.yaml:8:19: guest.boot-disk-size: 2048G is out of range; a boot disk is 40M to 1024G`}},
		{"boot-disk-size not whole MiB", syslinux("\n  boot-disk-size: 65537K"),
			[]string{`t.yaml:8:19: guest.boot-disk-size: 65537K is not a whole number of MiB`}},
		{"boot-disk-size bare number", syslinux("\n  boot-disk-size: 512"),
			[]string{`t.yaml:8:19: guest.boot-disk-size: want a size with a unit such as 512M or 2G, got the bare number 512`}},
		{"firmware with kernel", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0\n  firmware: default"),
			[]string{`t.yaml:7:13: guest.firmware: only with disk or bootloader: a kernel alone is loaded without firmware`}},
		{"firmware missing", syslinux("\n  firmware: /nonexistent/bios.bin"),
			[]string{`t.yaml:8:13: guest.firmware: /nonexistent/bios.bin: no such file or directory`}},
		{"firmware relative and missing", guestBlock("guest: {disk: d.img, firmware: bios.bin}\n"),
			[]string{`t.yaml:3:32: guest.firmware: ` + filepath.Join(cwd(t), "bios.bin") + `: no such file or directory`}},
		{"firmware a directory", syslinux("\n  firmware: " + fwDir),
			[]string{`t.yaml:8:13: guest.firmware: ` + fwDir + ` is not a regular file`}},
		{"firmware of odd size", syslinux("\n  firmware: " + fwOdd),
			[]string{`t.yaml:8:13: guest.firmware: ` + fwOdd + ` is 100 bytes; a BIOS image is a whole number of 64K, at most 256K`}},
		{"firmware empty", syslinux("\n  firmware: " + fwEmpty),
			[]string{`t.yaml:8:13: guest.firmware: ` + fwEmpty + ` is 0 bytes; a BIOS image is a whole number of 64K, at most 256K`}},
		{"firmware too big", syslinux("\n  firmware: " + fwBig),
			[]string{`t.yaml:8:13: guest.firmware: ` + fwBig + ` is 327680 bytes; a BIOS image is a whole number of 64K, at most 256K`}},
		{"firmware empty path", syslinux("\n  firmware: ''"),
			[]string{`t.yaml:8:13: guest.firmware: empty path`}},
		{"output over the firmware", strings.Replace(syslinux("\n  firmware: "+fwOK), "  path: out.bbsnap", "  path: "+fwOK, 1), []string{
			`t.yaml:16:9: output.path: ` + fwOK + ` exists and is not a directory; an artifact is a directory (an OCI image layout)`,
			`t.yaml:16:9: output.path: ` + fwOK + ` is also guest.firmware; the artifact would overwrite it`,
		}},
		{"newline in cmdline with bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: \"console=ttyS0\\nDEFAULT evil\"\n  bootloader: syslinux"),
			[]string{`t.yaml:6:12: guest.cmdline: control character '\n' at byte 13; with bootloader the command line is a line of syslinux.cfg`}},
		{"initrd= in cmdline with bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: console=ttyS0 initrd=/x.img\n  bootloader: syslinux"),
			[]string{`t.yaml:6:12: guest.cmdline: "initrd=/x.img": with bootloader, syslinux would load it; give the initrd as guest.initrd`}},
		{"cmdline too long with bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: "+strings.Repeat("x", MaxBootloaderCmdline+1)+"\n  bootloader: syslinux"),
			[]string{`t.yaml:6:12: guest.cmdline: 4001 bytes long; with bootloader the most is 4000`}},
		{"cmdline - with bootloader", edit(t, "  cmdline: console=ttyS0", "  cmdline: '-'\n  bootloader: syslinux"),
			[]string{`t.yaml:6:12: guest.cmdline: "-" means no command line to syslinux`}},

		// Versions and documents.
		{"wrong apiVersion", edit(t, "apiVersion: bunkerbuild/v1", "apiVersion: bunkerbuild/v2\nfuture: {}"),
			[]string{`t.yaml:1:13: apiVersion: unsupported version "bunkerbuild/v2"; this bunkerbuild reads "bunkerbuild/v1"`}},
		{"apiVersion not a string", edit(t, "apiVersion: bunkerbuild/v1", "apiVersion: 1"),
			[]string{`t.yaml:1:13: apiVersion: want a string, got the integer 1 (quote it to make it a string: "1")`}},
		{"missing apiVersion", edit(t, "apiVersion: bunkerbuild/v1", ""),
			[]string{`t.yaml:1:1: missing required key "apiVersion" at top level`}},
		{"empty file", "", []string{`t.yaml:1:1: empty file: want a recipe starting with apiVersion: bunkerbuild/v1`}},
		{"only comments", "# nothing\n\n", []string{`t.yaml:1:1: empty file: want a recipe starting with apiVersion: bunkerbuild/v1`}},
		{"empty document", "# nothing\n---\n", []string{`t.yaml:3:1: empty document: want a recipe starting with apiVersion: bunkerbuild/v1`}},
		{"list document", "- apiVersion: bunkerbuild/v1\n",
			[]string{`t.yaml:1:1: a recipe is a mapping of keys (apiVersion, name, guest, machine, booted, output), got a list`}},
		{"scalar document", "recipe\n",
			[]string{`t.yaml:1:1: a recipe is a mapping of keys (apiVersion, name, guest, machine, booted, output), got the string "recipe"`}},
		{"two documents", base + "---\n" + base,
			[]string{`t.yaml:16:1: a second YAML document: a recipe file holds one`}},
		{"syntax error", edit(t, "  cpus: 2", "  cpus: 2: 3"),
			[]string{`t.yaml:9: YAML syntax: mapping values are not allowed in this context`}},
		{"syntax error in second document", base + "---\na: [\n",
			[]string{`t.yaml:17: YAML syntax: did not find expected node content`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse("t.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", r)
			}
			if r != nil {
				t.Errorf("Parse returned a recipe with its error")
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("Parse error:\n%s\nwant:\n%s", err, strings.Join(tc.want, "\n"))
			}
			checkErrors(t, err, "t.yaml")
		})
	}
}

func cwd(t *testing.T) string {
	t.Helper()
	d, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkErrors checks that err joins *Errors in file order, each in file.
func checkErrors(t *testing.T, err error, file string) {
	t.Helper()
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %T is not a join", err)
	}
	var prev Pos
	for _, e := range j.Unwrap() {
		re, ok := e.(*Error)
		if !ok {
			t.Fatalf("joined error %T (%v) is not an *Error", e, e)
		}
		if re.Pos.File != file {
			t.Errorf("error %q: file %q, want %q", re, re.Pos.File, file)
		}
		if re.Pos.compare(prev) < 0 {
			t.Errorf("error %q comes after one at %v", re, prev)
		}
		prev = re.Pos
	}
}

// TestValidateFirmwareBoot checks a recipe built in code: Parse's
// defaults are the caller's to set.
func TestValidateFirmwareBoot(t *testing.T) {
	r := &Recipe{
		File:       "built",
		APIVersion: APIVersion,
		Name:       "in-code",
		Guest:      Guest{Kernel: "/k", Bootloader: BootloaderSyslinux, BootDiskSize: DefaultBootDiskSize, Firmware: Default},
		Machine:    Machine{Memory: 1 << 30, CPUs: 1, Profile: ProfileFull, Serial: true},
		Booted:     Booted{GuestSignal: true, Timeout: time.Minute},
		Output:     Output{Path: "/o.bbsnap", SigningKey: "/key"},
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	r.Guest.BootDiskSize, r.Guest.Firmware = 0, ""
	want := `built: guest.boot-disk-size: 0 bytes is out of range; a boot disk is 40M to 1024G
built: guest.firmware: not set; booting through the firmware needs a BIOS image (a path, or default)`
	if err := r.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
	r.Guest = Guest{Kernel: "/k", BootDiskSize: 64 << 20, Firmware: "bios.bin"}
	want = `built: guest.boot-disk-size: only with bootloader: the size of the disk the boot loader is installed on
built: guest.firmware: only with disk or bootloader: a kernel alone is loaded without firmware`
	if err := r.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
	r.Guest = Guest{Disk: "/d.img", Firmware: "bios.bin"}
	want = `built: guest.firmware: "bios.bin" is not an absolute path`
	if err := r.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
}

// TestBootloaderCmdline requires the recipe's rules for a command line
// with bootloader to be the ones the disk is made with.
func TestBootloaderCmdline(t *testing.T) {
	if MaxBootloaderCmdline != diskimage.MaxSyslinuxCmdline {
		t.Errorf("MaxBootloaderCmdline = %d, diskimage.MaxSyslinuxCmdline = %d", MaxBootloaderCmdline, diskimage.MaxSyslinuxCmdline)
	}
	r := &Recipe{
		File:       "built",
		APIVersion: APIVersion,
		Name:       "in-code",
		Machine:    Machine{Memory: 1 << 30, CPUs: 1, Profile: ProfileFull, Serial: true},
		Booted:     Booted{GuestSignal: true, Timeout: time.Minute},
		Output:     Output{Path: "/o.bbsnap", SigningKey: "/key"},
	}
	for _, cmdline := range []string{
		"", "console=ttyS0 quiet", "a\nb", "a\rb", "a\tb", "a\x00b", "a\x7fb", "a\x1bb", "é ü", "\xff",
		"initrd=/x", "quiet initrd=", "myinitrd=x", "x=initrd=y", "-", " - ", "--", "- x", "x -",
		strings.Repeat("x", MaxBootloaderCmdline), strings.Repeat("x", MaxBootloaderCmdline+1),
	} {
		r.Guest = Guest{Kernel: "/k", Cmdline: cmdline, Bootloader: BootloaderSyslinux, BootDiskSize: DefaultBootDiskSize, Firmware: Default}
		err := r.Validate()
		if err != nil && !strings.Contains(err.Error(), "guest.cmdline: ") {
			t.Fatalf("Validate(%q): %v", cmdline, err)
		}
		derr := diskimage.CheckSyslinuxCmdline(cmdline)
		if (err == nil) != (derr == nil) {
			t.Errorf("command line %q: recipe says %v, diskimage says %v", cmdline, err, derr)
		}
	}
}

func TestErrorWraps(t *testing.T) {
	_, err := Parse("t.yaml", []byte(edit(t, `  console: 'cpus=\d+'`, `  console: '(('`)))
	var re *Error
	if !errors.As(err, &re) || re.Pos != (Pos{"t.yaml", 11, 12}) {
		t.Fatalf("errors.As(%v, *Error) = %+v", err, re)
	}
	var se *syntax.Error
	if !errors.As(err, &se) || se.Code != syntax.ErrMissingParen {
		t.Errorf("errors.As(%v, *syntax.Error) = %v", err, se)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "r.yaml")
	if err := os.WriteFile(file, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if r.File != file || r.Dir != dir || r.Output.Path != filepath.Join(dir, "out.bbsnap") {
		t.Errorf("Load: File %q Dir %q Output.Path %q", r.File, r.Dir, r.Output.Path)
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want os.ErrNotExist", err)
	}
}

func TestValidate(t *testing.T) {
	r := &Recipe{
		File:       "built",
		APIVersion: APIVersion,
		Name:       "in-code",
		Guest:      Guest{Kernel: "/k"},
		Machine:    Machine{Memory: 1 << 30, CPUs: 1, Profile: ProfileFull, Serial: true},
		Booted:     Booted{GuestSignal: true, Timeout: time.Minute},
		Output:     Output{Path: "/o.bbsnap", SigningKey: "/key"},
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	r.Guest.Initrd = "relative.cpio"
	r.Machine.CPUs = 100
	r.Booted.Console = regexp.MustCompile("x")
	r.Output = Output{}
	err := r.Validate()
	want := `built: guest.initrd: "relative.cpio" is not an absolute path
built: machine.cpus: 100 is out of range; want 1 to 64
built: booted.guest-signal: a second condition (console, guest-signal); give exactly one
built: missing required key "output" at top level`
	if err == nil || err.Error() != want {
		t.Errorf("Validate:\n%v\nwant:\n%s", err, want)
	}
}

func TestErrorf(t *testing.T) {
	yaml := strings.Replace(strings.Replace(base, "  initrd: default\n", "", 1), "  cmdline: console=ttyS0\n", "", 1)
	r, err := Parse("recipes/x.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Errorf("guest.kernel", "not a bzImage").Error(); got != "recipes/x.yaml:4:11: guest.kernel: not a bzImage" {
		t.Errorf("Errorf = %q", got)
	}
	// A key the file does not have: the position of its section.
	got := r.Errorf("guest.disk", "booting from a disk is not supported yet: %w", errors.ErrUnsupported)
	if want := "recipes/x.yaml:3:1: guest.disk: booting from a disk is not supported yet: unsupported operation"; got.Error() != want {
		t.Errorf("Errorf = %q, want %q", got, want)
	}
	if !errors.Is(got, errors.ErrUnsupported) {
		t.Errorf("Errorf does not wrap %%w")
	}
	if got := r.Errorf("", "no artifact written").Error(); got != "recipes/x.yaml:1:1: no artifact written" {
		t.Errorf("Errorf = %q", got)
	}
}

func TestPosString(t *testing.T) {
	for _, tc := range []struct {
		p    Pos
		want string
	}{
		{Pos{"f.yaml", 7, 3}, "f.yaml:7:3"},
		{Pos{"f.yaml", 7, 0}, "f.yaml:7"},
		{Pos{"f.yaml", 0, 0}, "f.yaml"},
		{Pos{"", 7, 3}, "7:3"},
		{Pos{}, ""},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestSuggest(t *testing.T) {
	for _, tc := range []struct{ section, key, want string }{
		{"machine", "memroy", ` (did you mean "memory"?)`},
		{"machine", "CPUS", ` (did you mean "cpus"?)`},
		{"output", "signing_key", ` (did you mean "signing-key"?)`},
		{"booted", "timout", ` (did you mean "timeout"?)`},
		{"", "apiversion", ` (did you mean "apiVersion"?)`},
		{"", "kernel", ` (did you mean "kernel" in guest?)`},
		{"guest", "machine", ` (did you mean "machine" at top level?)`},
		{"machine", "zzz", ""},
		{"guest", "dsk", ` (did you mean "disk"?)`},
	} {
		if got := suggest(tc.section, tc.key); got != tc.want {
			t.Errorf("suggest(%q, %q) = %q, want %q", tc.section, tc.key, got, tc.want)
		}
	}
}

func TestMaxFirmwareSizeIsTheROMWindow(t *testing.T) {
	if rom := inventory.MustGet(inventory.BIOSROM); rom.Size != MaxFirmwareSize {
		t.Errorf("MaxFirmwareSize %d, the inventory's %s window %d", MaxFirmwareSize, rom.ID, rom.Size)
	}
}
