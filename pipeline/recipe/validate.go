package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// validator checks a Recipe's values and the rules between them.
type validator struct {
	r *Recipe
	// failed holds keys that did not decode (see decoder.failed); checks
	// on them, or on sections holding them, are skipped.
	failed map[string]bool
	errs   []*Error
}

func (r *Recipe) validate(failed map[string]bool) []*Error {
	v := &validator{r: r, failed: failed}
	v.top()
	if v.section("guest", r.Guest == Guest{}) {
		v.guest()
	}
	if v.section("machine", r.Machine.Memory == 0 && r.Machine.CPUs == 0) {
		v.machine()
	}
	if v.section("booted", r.Booted == Booted{}) {
		v.booted()
	}
	if v.section("output", r.Output == Output{}) {
		v.output()
	}
	return v.errs
}

// errorf reports a problem with key's value, at its position.
func (v *validator) errorf(key, format string, args ...any) {
	v.errs = append(v.errs, v.r.Errorf(key, format, args...).(*Error))
}

// bad reports whether key, or a section holding it, did not decode.
func (v *validator) bad(key string) bool {
	for {
		if v.failed[key] {
			return true
		}
		i := strings.LastIndexByte(key, '.')
		if i < 0 {
			return false
		}
		key = key[:i]
	}
}

// given reports whether the file has key.
func (v *validator) given(key string) bool {
	_, ok := v.r.Positions[key]
	return ok
}

// check reports whether key's value should be checked: it decoded, and it
// is either set or in the file. A required key that is neither is reported
// missing.
func (v *validator) check(key string, set, required bool) bool {
	if v.bad(key) {
		return false
	}
	if set || v.given(key) {
		return true
	}
	if required {
		section, name := "", key
		if i := strings.LastIndexByte(key, '.'); i >= 0 {
			section, name = key[:i], key[i+1:]
		}
		v.errs = append(v.errs, &Error{Pos: v.r.Pos(key), Err: fmt.Errorf("missing required key %q %s", name, where(section))})
	}
	return false
}

// section reports whether a required section's keys should be checked.
func (v *validator) section(key string, zero bool) bool {
	return v.check(key, !zero, true)
}

func (v *validator) top() {
	r := v.r
	if v.check("apiVersion", r.APIVersion != "", true) && r.APIVersion != APIVersion {
		v.errorf("apiVersion", "unsupported version %q; this bunkerbuild reads %q", r.APIVersion, APIVersion)
	}
	if v.check("name", r.Name != "", true) && (len(r.Name) > MaxNameLen || !validName.MatchString(r.Name)) {
		v.errorf("name", "%q: want 1 to %d of a-z, 0-9 and -, starting with a letter or digit", r.Name, MaxNameLen)
	}
}

func (v *validator) guest() {
	g := v.r.Guest
	bootloader := v.check("guest.bootloader", g.Bootloader != "", false)
	switch {
	case g.Kernel != "" && g.Disk != "":
		v.errorf("guest.disk", "give kernel or disk, not both")
	case g.Kernel == "" && g.Disk == "":
		if !v.bad("guest.kernel") && !v.bad("guest.disk") {
			v.errorf("guest", "give kernel (with optional initrd and cmdline) or disk")
		}
	case g.Disk != "":
		if g.Initrd != "" {
			v.errorf("guest.initrd", "only with kernel: a disk image boots through its own boot loader")
		}
		if g.Cmdline != "" {
			v.errorf("guest.cmdline", "only with kernel: a disk image boots through its own boot loader")
		}
		if bootloader {
			v.errorf("guest.bootloader", "only with kernel: a disk image boots through its own boot loader")
		}
	}
	v.path("guest.kernel", g.Kernel, true)
	v.path("guest.initrd", g.Initrd, true)
	v.path("guest.disk", g.Disk, false)
	if bootloader && g.Bootloader != BootloaderSyslinux {
		v.errorf("guest.bootloader", "unknown boot loader %q; the one supported is %q", g.Bootloader, BootloaderSyslinux)
	}
	if g.Bootloader == BootloaderSyslinux {
		v.syslinuxCmdline(g.Cmdline)
	} else {
		if len(g.Cmdline) > MaxCmdlineLen {
			v.errorf("guest.cmdline", "%d bytes long; the most is %d", len(g.Cmdline), MaxCmdlineLen)
		}
		if strings.ContainsRune(g.Cmdline, 0) {
			v.errorf("guest.cmdline", "contains a NUL byte")
		}
	}

	sizeGiven := v.check("guest.boot-disk-size", g.BootDiskSize != 0, false)
	if !v.bad("guest.boot-disk-size") && !v.bad("guest.bootloader") {
		switch n := g.BootDiskSize; {
		case g.Bootloader == "":
			if sizeGiven && !bootloader {
				v.errorf("guest.boot-disk-size", "only with bootloader: the size of the disk the boot loader is installed on")
			}
		case n < MinBootDiskSize || n > MaxBootDiskSize:
			v.errorf("guest.boot-disk-size", "%s is out of range; a boot disk is %s to %s", formatSize(n), formatSize(MinBootDiskSize), formatSize(MaxBootDiskSize))
		case n%MemoryAlign != 0:
			v.errorf("guest.boot-disk-size", "%s is not a whole number of MiB", formatSize(n))
		}
	}

	switch {
	case v.check("guest.firmware", g.Firmware != "", false):
		if g.FirmwareBoot() {
			v.firmware(g.Firmware)
		} else if !v.bad("guest.disk") && !v.bad("guest.bootloader") {
			v.errorf("guest.firmware", "only with disk or bootloader: a kernel alone is loaded without firmware")
		}
	case g.FirmwareBoot() && !v.bad("guest.firmware"):
		v.errorf("guest.firmware", "not set; booting through the firmware needs a BIOS image (a path, or %s)", Default)
	}
}

// syslinuxCmdline checks that syslinux.cfg can hold cmdline as it is:
// the rules of internal/diskimage.CheckSyslinuxCmdline, which a test
// compares.
func (v *validator) syslinuxCmdline(cmdline string) {
	if len(cmdline) > MaxBootloaderCmdline {
		v.errorf("guest.cmdline", "%d bytes long; with bootloader the most is %d", len(cmdline), MaxBootloaderCmdline)
	}
	if i := strings.IndexFunc(cmdline, func(r rune) bool { return r < ' ' || r == 0x7f }); i >= 0 {
		v.errorf("guest.cmdline", "control character %q at byte %d; with bootloader the command line is a line of syslinux.cfg", cmdline[i], i)
	}
	for _, word := range strings.Fields(cmdline) {
		if strings.HasPrefix(word, "initrd=") {
			v.errorf("guest.cmdline", "%q: with bootloader, syslinux would load it; give the initrd as guest.initrd", word)
			break
		}
	}
	if strings.TrimSpace(cmdline) == "-" {
		v.errorf("guest.cmdline", `"-" means no command line to syslinux`)
	}
}

// firmware checks guest.firmware: Default, or a regular file of a whole
// number of FirmwareAlign bytes, at most MaxFirmwareSize.
func (v *validator) firmware(p string) {
	if p == Default {
		return
	}
	if !filepath.IsAbs(p) {
		v.path("guest.firmware", p, true)
		return
	}
	st, err := os.Stat(p)
	var pe *fs.PathError
	switch {
	case errors.As(err, &pe):
		v.errorf("guest.firmware", "%s: %v", p, pe.Err)
	case err != nil:
		v.errorf("guest.firmware", "%v", err)
	case !st.Mode().IsRegular():
		v.errorf("guest.firmware", "%s is not a regular file", p)
	case st.Size() <= 0 || st.Size()%FirmwareAlign != 0 || st.Size() > MaxFirmwareSize:
		v.errorf("guest.firmware", "%s is %d bytes; a BIOS image is a whole number of %s, at most %s", p, st.Size(), formatSize(FirmwareAlign), formatSize(MaxFirmwareSize))
	}
}

// path checks that a set path is absolute, or Default where allowed.
// Parse resolves paths; only a Recipe built or changed in code can fail.
func (v *validator) path(key, p string, allowDefault bool) {
	if p == "" || filepath.IsAbs(p) || (allowDefault && p == Default) {
		return
	}
	v.errorf(key, "%q is not an absolute path", p)
}

func (v *validator) machine() {
	m := v.r.Machine
	if v.check("machine.memory", m.Memory != 0, true) {
		switch {
		case m.Memory < MinMemory || m.Memory > MaxMemory:
			v.errorf("machine.memory", "%s is out of range; want %s to %s", formatSize(m.Memory), formatSize(MinMemory), formatSize(MaxMemory))
		case m.Memory%MemoryAlign != 0:
			v.errorf("machine.memory", "%s is not a whole number of MiB", formatSize(m.Memory))
		}
	}
	if v.check("machine.cpus", m.CPUs != 0, true) && (m.CPUs < 1 || m.CPUs > MaxCPUs) {
		v.errorf("machine.cpus", "%d is out of range; want 1 to %d", m.CPUs, MaxCPUs)
	}
	if !v.bad("machine.disks") {
		v.disks()
	}
	if !v.bad("machine.profile") && m.Profile != ProfileFull {
		if m.Profile == "minimal" {
			v.errorf("machine.profile", "%q is the production device set, which cannot boot a guest; builds boot on %q", m.Profile, ProfileFull)
		} else {
			v.errorf("machine.profile", "unknown profile %q; builds boot on %q", m.Profile, ProfileFull)
		}
	}
}

func (v *validator) disks() {
	disks := v.r.Machine.Disks
	if len(disks) > MaxDisks {
		v.errorf("machine.disks", "%d disks; the machine has %d virtio-blk slots", len(disks), MaxDisks)
	}
	seen := map[string]int{}
	for i, d := range disks {
		key := fmt.Sprintf("machine.disks[%d]", i)
		if v.bad(key) {
			continue
		}
		switch {
		case d.ID == "":
			v.errorf(key, "disk %d has no id (the serial number the guest sees, such as data)", i)
		case len(d.ID) > MaxDiskIDLen || !validDiskID.MatchString(d.ID):
			v.errorf(key+".id", "%q: want up to %d bytes of [a-z0-9-], starting with a letter or digit", d.ID, MaxDiskIDLen)
		default:
			if j, dup := seen[d.ID]; dup {
				v.errorf(key+".id", "%q is also the id of disk %d", d.ID, j)
			}
			seen[d.ID] = i
		}
		switch {
		case d.Image == "" && d.Size == 0:
			v.errorf(key, "disk %d needs an image (a raw image file to copy) or a size (a new FAT32 disk)", i)
		case d.Image != "" && d.Size != 0:
			v.errorf(key+".size", "give an image or a size, not both")
		case d.Image != "":
			v.path(key+".image", d.Image, false)
		case d.Size < MinNewDisk || d.Size > MaxNewDisk:
			v.errorf(key+".size", "%s is out of range; a new FAT32 disk is %s to %s", formatSize(d.Size), formatSize(MinNewDisk), formatSize(MaxNewDisk))
		case d.Size%MemoryAlign != 0:
			v.errorf(key+".size", "%s is not a whole number of MiB", formatSize(d.Size))
		}
	}
}

func (v *validator) booted() {
	b := v.r.Booted
	type condition struct {
		key string
		set bool
	}
	var given []condition
	for _, c := range []condition{
		{"booted.console", b.Console != nil},
		{"booted.legacy-idle", b.LegacyIdle != 0},
		{"booted.guest-signal", b.GuestSignal},
	} {
		if c.set || v.given(c.key) {
			given = append(given, c)
		}
	}
	slices.SortStableFunc(given, func(a, b condition) int { return v.r.Pos(a.key).compare(v.r.Pos(b.key)) })
	switch len(given) {
	case 0:
		v.errorf("booted", "no condition; give one of console, legacy-idle or guest-signal")
	case 1:
	default:
		names := make([]string, len(given))
		for i, c := range given {
			names[i] = strings.TrimPrefix(c.key, "booted.")
		}
		v.errorf(given[1].key, "a second condition (%s); give exactly one", strings.Join(names, ", "))
	}

	timeoutOK := false
	if v.check("booted.timeout", b.Timeout != 0, true) {
		switch {
		case b.Timeout <= 0:
			v.errorf("booted.timeout", "%v: want a positive duration", b.Timeout)
		case b.Timeout > MaxTimeout:
			v.errorf("booted.timeout", "%v is longer than the maximum %v", b.Timeout, MaxTimeout)
		default:
			timeoutOK = true
		}
	}
	if v.check("booted.settle", b.Settle != 0, false) {
		switch {
		case b.Settle < 0:
			v.errorf("booted.settle", "%v is negative", b.Settle)
		case timeoutOK && b.Settle >= b.Timeout:
			v.errorf("booted.timeout", "%v must exceed settle (%v): it bounds booting and settling together", b.Timeout, b.Settle)
		}
	}
	if v.check("booted.legacy-idle", b.LegacyIdle != 0, false) {
		switch {
		case b.LegacyIdle < MinLegacyIdle:
			v.errorf("booted.legacy-idle", "%v is shorter than the minimum %v", b.LegacyIdle, MinLegacyIdle)
		case timeoutOK && b.LegacyIdle >= b.Timeout:
			v.errorf("booted.legacy-idle", "%v must be shorter than timeout (%v), or the guest can never count as booted", b.LegacyIdle, b.Timeout)
		}
	}
	if b.Console != nil && !v.r.Machine.Serial && !v.bad("machine.serial") {
		v.errorf("machine.serial", "false, but booted.console watches the serial console")
	}
}

func (v *validator) output() {
	o, g := v.r.Output, v.r.Guest
	if v.check("output.path", o.Path != "", true) {
		if fi, err := os.Stat(o.Path); err == nil && !fi.IsDir() {
			v.errorf("output.path", "%s exists and is not a directory; an artifact is a directory (an OCI image layout)", o.Path)
		} else if err == nil {
			if _, err := os.Stat(filepath.Join(o.Path, "oci-layout")); err != nil {
				v.errorf("output.path", "%s is a directory but not an artifact (no oci-layout file); the build replaces only an earlier artifact", o.Path)
			}
		}
		for _, in := range []struct{ key, path string }{
			{"output.signing-key", o.SigningKey},
			{"guest.kernel", g.Kernel},
			{"guest.initrd", g.Initrd},
			{"guest.disk", g.Disk},
			{"guest.firmware", g.Firmware},
			{"the recipe", v.recipePath()},
		} {
			if in.path != "" && in.path == o.Path {
				v.errorf("output.path", "%s is also %s; the artifact would overwrite it", o.Path, in.key)
			}
		}
	}
	v.check("output.signing-key", o.SigningKey != "", true)
	v.path("output.path", o.Path, false)
	v.path("output.signing-key", o.SigningKey, false)
}

// recipePath returns the recipe file's absolute path, or "" if unknown.
func (v *validator) recipePath() string {
	if v.r.File == "" {
		return ""
	}
	return filepath.Join(v.r.Dir, filepath.Base(v.r.File))
}

// formatSize writes a byte count the way recipes do.
func formatSize(n uint64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
