package lab

import (
	"fmt"
	"io"
	"path"
	"strings"
	"syscall"
)

// cpioWriter writes an uncompressed "newc" cpio archive, the format the
// Linux kernel unpacks as an initramfs. Parent directories of each entry are
// written first, with mode 0755, unless already written. All entries have
// owner root and mtime 0, so the same inputs give the same bytes.
type cpioWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, ino: 1, dirs: map[string]bool{".": true}}
}

// Dir writes a directory and its missing parents.
func (c *cpioWriter) Dir(name string, perm uint32) error {
	name = cleanName(name)
	if c.dirs[name] {
		return c.err
	}
	c.parents(name)
	c.dirs[name] = true
	return c.entry(name, syscall.S_IFDIR|perm, 0, nil)
}

// File writes a regular file and its missing parents.
func (c *cpioWriter) File(name string, perm uint32, data []byte) error {
	name = cleanName(name)
	c.parents(name)
	return c.entry(name, syscall.S_IFREG|perm, 0, data)
}

// CharDev writes a character device node and its missing parents.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	name = cleanName(name)
	c.parents(name)
	return c.entry(name, syscall.S_IFCHR|perm, major<<8|minor, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	return c.entry("TRAILER!!!", 0, 0, nil)
}

func (c *cpioWriter) parents(name string) {
	if dir := path.Dir(name); !c.dirs[dir] {
		c.Dir(dir, 0o755)
	}
}

// cleanName returns name as an archive path: cleaned, without leading "/".
func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// entry writes one header, name and data. rdev packs major<<8|minor.
func (c *cpioWriter) entry(name string, mode, rdev uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	nlink := uint32(1)
	if mode&syscall.S_IFMT == syscall.S_IFDIR {
		nlink = 2
	}
	ino := c.ino
	c.ino++
	if name == "TRAILER!!!" {
		ino = 0
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev>>8, rdev&0xff, len(name)+1, 0)
	c.write([]byte(hdr + name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
	if c.err != nil {
		return fmt.Errorf("write cpio entry %s: %w", name, c.err)
	}
	return nil
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

// pad writes zeros up to the next multiple of 4 after n bytes.
func (c *cpioWriter) pad(n int) {
	c.write(make([]byte, (4-n%4)%4))
}
