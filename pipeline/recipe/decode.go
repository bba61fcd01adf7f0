package recipe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/bunkerbuild/bunkerbuild/internal/units"
)

// schema lists the keys of each mapping in a recipe, by section ("" is the
// top level). The decoder accepts exactly these keys; recipes/README.md
// must document every one (a test checks).
var schema = []struct {
	section string
	keys    []string
}{
	{"", []string{"apiVersion", "name", "guest", "machine", "booted", "output"}},
	{"guest", []string{"kernel", "initrd", "cmdline", "disk", "bootloader", "boot-disk-size", "firmware"}},
	{"machine", []string{"memory", "cpus", "profile", "serial", "disks", "nic"}},
	{"machine.disks", []string{"id", "image", "size", "read-only"}},
	{"booted", []string{"console", "legacy-idle", "guest-signal", "settle", "timeout"}},
	{"output", []string{"path", "signing-key"}},
}

// sectionKeys returns the keys of section, or nil if it is not a section.
func sectionKeys(section string) []string {
	for _, s := range schema {
		if s.section == section {
			return s.keys
		}
	}
	return nil
}

// decoder walks a recipe's YAML nodes into a Recipe.
type decoder struct {
	r    *Recipe
	errs []*Error
	// failed holds the keys whose values did not decode, so that
	// validation does not report them a second time as missing or zero.
	failed map[string]bool
}

// entry is one key and its value in a mapping.
type entry struct {
	path string // dotted key path, e.g. "machine.memory"
	k, v *yaml.Node
}

func (d *decoder) pos(n *yaml.Node) Pos {
	return Pos{File: d.r.File, Line: n.Line, Column: n.Column}
}

func (d *decoder) errorAt(p Pos, format string, args ...any) {
	d.errs = append(d.errs, &Error{Pos: p, Err: fmt.Errorf(format, args...)})
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errorAt(d.pos(n), format, args...)
}

// fail reports that e's value is bad and marks the key failed.
func (d *decoder) fail(e entry, format string, args ...any) {
	d.failed[e.path] = true
	d.errorf(e.v, "%s: %w", e.path, fmt.Errorf(format, args...))
}

// document decodes data's single YAML document into d.r. It reports
// whether the document was decoded far enough for validation to make sense.
func (d *decoder) document(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.errorAt(Pos{File: d.r.File, Line: 1, Column: 1}, "empty file: want a recipe starting with apiVersion: %s", APIVersion)
		} else {
			d.yamlError(err)
		}
		return false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.errorf(&extra, "a second YAML document: a recipe file holds one")
	case !errors.Is(err, io.EOF):
		d.yamlError(err)
	}

	root := &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	d.r.Positions[""] = d.pos(root)
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		d.errorf(root, "empty document: want a recipe starting with apiVersion: %s", APIVersion)
		return false
	}
	if root.Kind != yaml.MappingNode {
		d.errorf(root, "a recipe is a mapping of keys (%s), got %s", strings.Join(sectionKeys(""), ", "), describe(root))
		return false
	}
	// A recipe of another version is refused before its keys are judged by
	// this version's schema.
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "apiVersion" && isString(v) && v.Value != APIVersion {
			d.errorf(v, "apiVersion: unsupported version %q; this bunkerbuild reads %q", v.Value, APIVersion)
			return false
		}
	}
	d.top(root)
	return true
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlError reports a YAML syntax error. yaml.v3 gives a line for most
// (not always the exact one) and never a column.
func (d *decoder) yamlError(err error) {
	p := Pos{File: d.r.File}
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	d.errs = append(d.errs, &Error{Pos: p, Err: &syntaxError{msg: msg, err: err}})
}

// syntaxError is yaml.v3's error with its position moved into the *Error
// holding it.
type syntaxError struct {
	msg string
	err error
}

func (e *syntaxError) Error() string { return "YAML syntax: " + e.msg }
func (e *syntaxError) Unwrap() error { return e.err }

// mapping checks that n is a mapping of section's keys without duplicates
// and returns its entries, reporting unknown and duplicate keys. It
// records each entry's position.
func (d *decoder) mapping(section string, n *yaml.Node) []entry {
	keys := sectionKeys(section)
	if n.Kind != yaml.MappingNode {
		d.fail(entry{path: section, v: n}, "want a mapping of keys (%s), got %s", strings.Join(keys, ", "), describe(n))
		return nil
	}
	var entries []entry
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			d.errorf(k, "merge keys (<<) are not supported %s; write the keys out", where(section))
			continue
		}
		if !isString(k) {
			d.errorf(k, "want a key name %s, got %s", where(section), describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(k, "duplicate key %q %s (first at line %d)", k.Value, where(section), first.Line)
			continue
		}
		seen[k.Value] = k
		if !slices.Contains(keys, k.Value) {
			d.errorf(k, "unknown key %q %s%s", k.Value, where(section), suggest(section, k.Value))
			continue
		}
		e := entry{path: join2(section, k.Value), k: k, v: v}
		if sectionKeys(e.path) != nil {
			d.r.Positions[e.path] = d.pos(k)
		} else {
			d.r.Positions[e.path] = d.pos(v)
		}
		if v.Kind == yaml.AliasNode {
			d.fail(e, "aliases (*%s) are not supported; write the value out", v.Value)
			continue
		}
		entries = append(entries, e)
	}
	return entries
}

func join2(section, key string) string {
	if section == "" {
		return key
	}
	return section + "." + key
}

func where(section string) string {
	if section == "" {
		return "at top level"
	}
	return "in " + section
}

func (d *decoder) top(n *yaml.Node) {
	r := d.r
	for _, e := range d.mapping("", n) {
		switch e.k.Value {
		case "apiVersion":
			r.APIVersion = d.str(e)
		case "name":
			r.Name = d.str(e)
		case "guest":
			d.guest(e.v)
		case "machine":
			d.machine(e.v)
		case "booted":
			d.booted(e.v)
		case "output":
			d.output(e.v)
		}
	}
}

func (d *decoder) guest(n *yaml.Node) {
	g := &d.r.Guest
	for _, e := range d.mapping("guest", n) {
		switch e.k.Value {
		case "kernel":
			g.Kernel = d.path(e, true)
		case "initrd":
			g.Initrd = d.path(e, true)
		case "cmdline":
			g.Cmdline = d.str(e)
		case "disk":
			if isString(e.v) && e.v.Value == Default {
				d.fail(e, "there is no default disk image; give a path (./%s for a file named %s)", Default, Default)
				continue
			}
			g.Disk = d.path(e, false)
		case "bootloader":
			g.Bootloader = d.str(e)
		case "boot-disk-size":
			g.BootDiskSize = d.size(e)
		case "firmware":
			g.Firmware = d.path(e, true)
		}
	}
}

// defaults fills in the defaults that depend on other keys: the boot
// disk's size with a boot loader, and the firmware of a firmware boot.
func (d *decoder) defaults() {
	g := &d.r.Guest
	if _, given := d.r.Positions["guest.boot-disk-size"]; g.Bootloader != "" && !given {
		g.BootDiskSize = DefaultBootDiskSize
	}
	if _, given := d.r.Positions["guest.firmware"]; g.FirmwareBoot() && !given {
		g.Firmware = Default
	}
}

func (d *decoder) machine(n *yaml.Node) {
	m := &d.r.Machine
	for _, e := range d.mapping("machine", n) {
		switch e.k.Value {
		case "memory":
			m.Memory = d.size(e)
		case "cpus":
			m.CPUs = d.integer(e)
		case "profile":
			m.Profile = d.str(e)
		case "serial":
			m.Serial = d.boolean(e)
		case "disks":
			d.disks(e)
		case "nic":
			m.NIC = d.boolean(e)
		}
	}
}

// disks decodes machine.disks, a list of mappings. The keys of disk i
// are reported as machine.disks[i].KEY.
func (d *decoder) disks(list entry) {
	if list.v.Kind != yaml.SequenceNode {
		d.fail(list, "want a list of disks (- id: ...), got %s", describe(list.v))
		return
	}
	m := &d.r.Machine
	for i, n := range list.v.Content {
		item := fmt.Sprintf("machine.disks[%d]", i)
		d.r.Positions[item] = d.pos(n)
		var disk Disk
		for _, e := range d.mapping("machine.disks", n) {
			delete(d.r.Positions, e.path)
			e.path = item + "." + e.k.Value
			d.r.Positions[e.path] = d.pos(e.v)
			switch e.k.Value {
			case "id":
				disk.ID = d.str(e)
			case "image":
				disk.Image = d.path(e, false)
			case "size":
				disk.Size = d.size(e)
			case "read-only":
				disk.ReadOnly = d.boolean(e)
			}
		}
		m.Disks = append(m.Disks, disk)
	}
}

func (d *decoder) booted(n *yaml.Node) {
	b := &d.r.Booted
	for _, e := range d.mapping("booted", n) {
		switch e.k.Value {
		case "console":
			b.Console = d.pattern(e)
		case "legacy-idle":
			b.LegacyIdle = d.duration(e)
		case "guest-signal":
			if b.GuestSignal = d.boolean(e); !b.GuestSignal && !d.failed[e.path] {
				d.fail(e, "false is not a condition: write guest-signal: true, or give another condition")
			}
		case "settle":
			b.Settle = d.duration(e)
		case "timeout":
			b.Timeout = d.duration(e)
		}
	}
}

func (d *decoder) output(n *yaml.Node) {
	o := &d.r.Output
	for _, e := range d.mapping("output", n) {
		switch e.k.Value {
		case "path":
			o.Path = d.path(e, false)
			raw := e.v.Value
			if o.Path != "" && (strings.HasSuffix(raw, "/") || filepath.Base(raw) == "." || filepath.Base(raw) == "..") {
				d.fail(e, "%q names a directory; give the artifact's file name", raw)
				o.Path = ""
			}
		case "signing-key":
			o.SigningKey = d.path(e, false)
		}
	}
}

// isString reports whether n is a string scalar.
func isString(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str"
}

// describe names n's type for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case "!!null":
			return "no value"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!timestamp":
			return "the timestamp " + n.Value
		default:
			return fmt.Sprintf("a value tagged %s", tag)
		}
	}
	return "nothing"
}

// quoteHint suggests quoting a plain scalar that YAML read as another type.
func quoteHint(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode && n.Style == 0 && n.ShortTag() != "!!null" {
		return fmt.Sprintf(" (quote it to make it a string: %q)", n.Value)
	}
	return ""
}

func (d *decoder) str(e entry) string {
	if !isString(e.v) {
		d.fail(e, "want a string, got %s%s", describe(e.v), quoteHint(e.v))
		return ""
	}
	return e.v.Value
}

// path decodes a file path, resolved against the recipe's directory.
// With allowDefault, Default is kept as it is; otherwise it is a file name.
func (d *decoder) path(e entry, allowDefault bool) string {
	s := d.str(e)
	switch {
	case d.failed[e.path]:
		return ""
	case s == "":
		d.fail(e, "empty path")
		return ""
	case s == Default && allowDefault:
		return Default
	case strings.HasPrefix(s, "~"):
		d.fail(e, "%q: ~ is not expanded; give the path relative to the recipe or absolute", s)
		return ""
	case strings.ContainsRune(s, 0):
		d.fail(e, "path contains a NUL byte")
		return ""
	case filepath.IsAbs(s):
		return filepath.Clean(s)
	}
	return filepath.Join(d.r.Dir, s)
}

func (d *decoder) boolean(e entry) bool {
	var b bool
	if e.v.Kind != yaml.ScalarNode || e.v.ShortTag() != "!!bool" || e.v.Decode(&b) != nil {
		d.fail(e, "want true or false, got %s", describe(e.v))
	}
	return b
}

func (d *decoder) integer(e entry) int {
	if e.v.Kind != yaml.ScalarNode || e.v.ShortTag() != "!!int" {
		d.fail(e, "want an integer, got %s", describe(e.v))
		return 0
	}
	var i int
	if err := e.v.Decode(&i); err != nil {
		d.fail(e, "%s is not a usable integer", e.v.Value)
		return 0
	}
	return i
}

// size decodes a size such as 512M.
func (d *decoder) size(e entry) uint64 {
	if e.v.Kind == yaml.ScalarNode && e.v.ShortTag() == "!!int" {
		d.fail(e, "want a size with a unit such as 512M or 2G, got the bare number %s", e.v.Value)
		return 0
	}
	s := d.str(e)
	if d.failed[e.path] {
		return 0
	}
	n, err := units.ParseSize(s)
	if err != nil {
		d.fail(e, "%w", err)
		return 0
	}
	return n
}

// duration decodes a duration such as 90s or 5m. The integer 0 is
// accepted too.
func (d *decoder) duration(e entry) time.Duration {
	if e.v.Kind != yaml.ScalarNode || (e.v.ShortTag() != "!!str" && e.v.ShortTag() != "!!int") {
		d.fail(e, "want a duration such as 30s, 5m or 1h, got %s", describe(e.v))
		return 0
	}
	t, err := time.ParseDuration(e.v.Value)
	if err != nil {
		d.fail(e, "%w (want a duration such as 30s, 5m or 1h)", err)
		return 0
	}
	return t
}

// pattern decodes a regular expression.
func (d *decoder) pattern(e entry) *regexp.Regexp {
	s := d.str(e)
	switch {
	case d.failed[e.path]:
		return nil
	case s == "":
		d.fail(e, "empty pattern: it would match any line")
		return nil
	}
	re, err := regexp.Compile(s)
	if err != nil {
		d.fail(e, "%w", err)
		return nil
	}
	return re
}

// suggest returns a hint for an unknown key: a known key of the same
// section with a similar spelling, or the section where the key belongs.
func suggest(section, key string) string {
	best, bestDist := "", 3
	for _, k := range sectionKeys(section) {
		if dist := distance(strings.ToLower(key), strings.ToLower(k)); dist < bestDist && dist <= len(k)/3 {
			best, bestDist = k, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	bestSection := ""
	bestDist = 3
	for _, s := range schema {
		if s.section == section {
			continue
		}
		for _, k := range s.keys {
			if dist := distance(strings.ToLower(key), strings.ToLower(k)); dist < bestDist && dist <= len(k)/3 {
				best, bestSection, bestDist = k, s.section, dist
			}
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q %s?)", best, where(bestSection))
	}
	return ""
}

// distance is the optimal string alignment distance between a and b:
// edits, counting a swap of neighbours as one.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		return max(len(ra), len(rb))
	}
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
