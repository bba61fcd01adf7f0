// Package recipe reads build recipes: the YAML files that tell
// `bunkerbuild build` which guest to boot, on what machine, when the guest
// counts as booted, and where to write the signed snapshot. recipes/README.md
// documents the format.
//
// Reading is strict. Unknown keys, duplicate keys, values of the wrong type
// and values out of range are errors, each starting with file:line:column,
// and every error found in a file is reported at once (errors.Join).
package recipe

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// APIVersion is the only recipe format version this package reads.
const APIVersion = "bunkerbuild/v1"

// Default, as guest.kernel or guest.initrd, names the project's default
// guest: the stock Debian kernel and the u-root initramfs built by
// internal/guestimage. Resolved paths are absolute, so Default never
// collides with one.
const Default = "default"

// ProfileFull is the device profile builds boot on, and the only one a
// recipe may name.
const ProfileFull = "full"

// BootloaderSyslinux, as guest.bootloader, puts the kernel on a disk with
// syslinux (internal/diskimage.NewSyslinux). It is the only boot loader.
const BootloaderSyslinux = "syslinux"

// DefaultFirmware is the BIOS image that Default names as guest.firmware:
// Debian's SeaBIOS (package seabios).
const DefaultFirmware = "/usr/share/seabios/bios-256k.bin"

// Bounds on a recipe's values.
const (
	MinMemory     = memory.MinSize
	MaxMemory     = memory.MaxSize
	MemoryAlign   = 1 << 20 // guest RAM is a whole number of MiB
	MaxCPUs       = 64
	MaxTimeout    = time.Hour
	MinLegacyIdle = 100 * time.Millisecond
	MaxNameLen    = 63
	MaxCmdlineLen = memory.CmdlineMax - 1 // the kernel also needs the NUL
	MaxDisks      = 4                     // the inventory's virtio-blk slots
	MaxDiskIDLen  = 20                    // virtio-blk's serial number
	MinNewDisk    = 40 << 20              // FAT32 needs 65,525 clusters
	MaxNewDisk    = 1 << 40

	// The disk guest.bootloader is installed on: a new FAT32 disk.
	DefaultBootDiskSize = 256 << 20
	MinBootDiskSize     = MinNewDisk
	MaxBootDiskSize     = MaxNewDisk
	// MaxBootloaderCmdline bounds guest.cmdline with guest.bootloader:
	// syslinux reads its configuration in lines of at most 4095 bytes
	// (internal/diskimage.MaxSyslinuxCmdline).
	MaxBootloaderCmdline = 4000

	// A BIOS image is a whole number of 64 KiB, at most the inventory's
	// ROM window (bios-rom; a test checks they agree).
	FirmwareAlign   = 64 << 10
	MaxFirmwareSize = 256 << 10
)

var validDiskID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// Recipe is a parsed and validated recipe. Paths are absolute (or Default),
// sizes are in bytes, and durations and the console pattern are parsed.
type Recipe struct {
	// File is the name the recipe was read from, as given to Load or
	// Parse. Error messages start with it.
	File string
	// Dir is the absolute directory relative paths were resolved against:
	// File's directory.
	Dir string

	APIVersion string
	Name       string
	Guest      Guest
	Machine    Machine
	Booted     Booted
	Output     Output

	// Positions maps each key present in the file, as a dotted path such
	// as "machine.memory", to a position: for a value, where the value
	// starts; for a section (guest, machine, booted, output), where its
	// key is. "" maps to the start of the document. Use Pos or Errorf
	// rather than reading it directly.
	Positions map[string]Pos
}

// Guest is what the build boots: either a kernel (with an optional initrd
// and a command line) or a BIOS-bootable disk image. A kernel is loaded
// directly, unless Bootloader is set: then the build puts it on a new
// BIOS-bootable disk and boots that through Firmware, as it boots Disk.
type Guest struct {
	Kernel  string // absolute path, or Default; empty when Disk is set
	Initrd  string // absolute path, Default, or empty for none
	Cmdline string // kernel command line
	Disk    string // absolute path of a disk image; empty when Kernel is set

	// Bootloader is BootloaderSyslinux, or empty to load Kernel directly.
	Bootloader string
	// BootDiskSize is the size in bytes of the disk Bootloader is
	// installed on; 0 without Bootloader. Parse sets
	// DefaultBootDiskSize when the recipe does not say.
	BootDiskSize uint64
	// Firmware is the BIOS image of a firmware boot (see FirmwareBoot):
	// an absolute path, or Default for DefaultFirmware; empty otherwise.
	// Parse sets Default when the recipe does not say.
	Firmware string
}

// FirmwareBoot reports whether the guest boots through the firmware: from
// Disk, or from the disk made for Bootloader.
func (g Guest) FirmwareBoot() bool {
	return g.Disk != "" || g.Bootloader != ""
}

// Machine is the virtual machine the guest boots on.
type Machine struct {
	Memory  uint64 // bytes of guest RAM
	CPUs    int
	Profile string // device profile; always ProfileFull
	Serial  bool   // COM1 serial console; true unless the recipe says false
	Disks   []Disk // virtio-blk disks, in the guest's order
	NIC     bool   // a virtio-net NIC, disconnected during the build
}

// Disk is a virtio-blk disk of the machine: a copy of an image file, or
// a new disk of Size bytes with an MBR and one FAT32 partition.
type Disk struct {
	ID       string // the guest's serial number of the disk
	Image    string // absolute path; empty for a new disk
	Size     uint64 // bytes of a new disk; 0 with Image
	ReadOnly bool
}

// Booted says when the guest counts as booted. Exactly one of Console,
// LegacyIdle and GuestSignal is set.
type Booted struct {
	// Console: booted when a line of the serial console matches.
	Console *regexp.Regexp
	// LegacyIdle: booted when no legacy inventory entry has been touched
	// for this long.
	LegacyIdle time.Duration
	// GuestSignal: booted when the guest tool signals readiness.
	GuestSignal bool

	// Settle is how long to wait after booted before the snapshot.
	Settle time.Duration
	// Timeout bounds the wait from power-on to booted plus Settle.
	Timeout time.Duration
}

// Output is the artifact the build writes.
type Output struct {
	Path       string // absolute path of the artifact file
	SigningKey string // absolute path of the Ed25519 private key file
}

// Pos is a position in a recipe file. Line and Column start at 1; zero
// means unknown.
type Pos struct {
	File   string
	Line   int
	Column int
}

// String formats p as file:line:column, leaving out what is unknown.
func (p Pos) String() string {
	var parts []string
	if p.File != "" {
		parts = append(parts, p.File)
	}
	if p.Line > 0 {
		parts = append(parts, strconv.Itoa(p.Line))
		if p.Column > 0 {
			parts = append(parts, strconv.Itoa(p.Column))
		}
	}
	return strings.Join(parts, ":")
}

func (p Pos) compare(q Pos) int {
	return cmp.Or(cmp.Compare(p.Line, q.Line), cmp.Compare(p.Column, q.Column))
}

// Error is one problem in a recipe, at a position.
type Error struct {
	Pos Pos
	Err error
}

func (e *Error) Error() string {
	if s := e.Pos.String(); s != "" {
		return s + ": " + e.Err.Error()
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Load reads and parses the recipe file at path.
func Load(path string) (*Recipe, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates a recipe. name is the file it came from: error
// messages start with it and relative paths resolve against its directory
// (made absolute with the working directory). The error, if any, joins one
// *Error per problem, in file order.
func Parse(name string, data []byte) (*Recipe, error) {
	dir, err := filepath.Abs(filepath.Dir(name))
	if err != nil {
		return nil, fmt.Errorf("recipe %s: %w", name, err)
	}
	d := &decoder{
		r: &Recipe{
			File:      name,
			Dir:       dir,
			Machine:   Machine{Profile: ProfileFull, Serial: true},
			Positions: map[string]Pos{},
		},
		failed: map[string]bool{},
	}
	if d.document(data) {
		d.defaults()
		d.errs = append(d.errs, d.r.validate(d.failed)...)
	}
	if len(d.errs) > 0 {
		return nil, join(d.errs)
	}
	return d.r, nil
}

// Validate checks r's values: required fields, bounds and the rules between
// fields. Parse has already called it; call it again after changing a
// Recipe, or on one built in code. Problems are reported at the positions
// recorded in r.Positions, when there are any.
func (r *Recipe) Validate() error {
	if errs := r.validate(nil); len(errs) > 0 {
		return join(errs)
	}
	return nil
}

// Pos returns the position of key, a dotted path such as "guest.kernel"
// (see Positions). For a key the file does not have, it returns the
// position of the nearest enclosing section that it does have, or else the
// file alone.
func (r *Recipe) Pos(key string) Pos {
	for {
		if p, ok := r.Positions[key]; ok {
			return p
		}
		if key == "" {
			return Pos{File: r.File}
		}
		i := strings.LastIndexByte(key, '.')
		key = key[:max(i, 0)]
	}
}

// Errorf returns an *Error at key's position (see Pos), its message
// prefixed with key, for problems found after parsing: for example
// r.Errorf("machine.nic", "this host cannot make taps").
// The format accepts %w.
func (r *Recipe) Errorf(key, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if key != "" {
		err = fmt.Errorf("%s: %w", key, err)
	}
	return &Error{Pos: r.Pos(key), Err: err}
}

// join sorts errs by position and joins them.
func join(errs []*Error) error {
	slices.SortStableFunc(errs, func(a, b *Error) int { return a.Pos.compare(b.Pos) })
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = e
	}
	return errors.Join(all...)
}
