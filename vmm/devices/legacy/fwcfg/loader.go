package fwcfg

import (
	"encoding/binary"
	"fmt"
)

// LoaderFile is the name of the file that holds the ACPI table loader's
// commands, which SeaBIOS runs (src/fw/romfile_loader.c) when it finds it.
const LoaderFile = "etc/table-loader"

// Zone is where the firmware allocates a file, the ALLOCATE command's zone
// byte. The values are those of acpi.Zone.
type Zone uint8

const (
	ZoneHigh Zone = 1 // anywhere in RAM below 4 GiB that the firmware reserves
	ZoneFSeg Zone = 2 // in the F segment, 0xF0000-0xFFFFF
)

// Loader commands: 128 bytes each, little-endian, a le32 command then its
// arguments (QEMU hw/acpi/bios-linker-loader.c). A file name fills a
// 56-byte NUL-padded field.
const (
	loaderEntrySize = 128

	cmdAllocate    = 1 // file, le32 align, u8 zone
	cmdAddPointer  = 2 // dest file, src file, le32 offset, u8 size
	cmdAddChecksum = 3 // file, le32 result offset, le32 start, le32 length

	argFile   = 4                       // the first file name
	argFile2  = argFile + FileNameSize  // ADD_POINTER's source file
	argAfter1 = argFile + FileNameSize  // arguments after one name
	argAfter2 = argFile2 + FileNameSize // arguments after two names
)

// Loader encodes the commands of LoaderFile: ALLOCATE copies a file into
// guest memory, ADD_POINTER adds the address one file was allocated at to
// a field of another, ADD_CHECKSUM fixes a checksum byte. The firmware runs
// them in order. The zero Loader is empty and ready to use; it is not safe
// for concurrent use.
type Loader struct {
	b         []byte
	allocated map[string]bool
}

// Allocate adds an ALLOCATE command for file, aligned to align (a power of
// two) in zone. A file is allocated once, before any command names it.
func (l *Loader) Allocate(file string, align uint32, zone Zone) error {
	if err := checkName(file); err != nil {
		return fmt.Errorf("loader ALLOCATE: %w", err)
	}
	if align == 0 || align&(align-1) != 0 {
		return fmt.Errorf("loader ALLOCATE %q: alignment %d is not a power of two", file, align)
	}
	if zone != ZoneHigh && zone != ZoneFSeg {
		return fmt.Errorf("loader ALLOCATE %q: zone %d is neither high (1) nor F segment (2)", file, zone)
	}
	if l.allocated[file] {
		return fmt.Errorf("loader ALLOCATE %q: allocated twice", file)
	}
	if l.allocated == nil {
		l.allocated = map[string]bool{}
	}
	l.allocated[file] = true
	e := l.entry(cmdAllocate)
	copy(e[argFile:], file)
	binary.LittleEndian.PutUint32(e[argAfter1:], align)
	e[argAfter1+4] = byte(zone)
	return nil
}

// AddPointer adds an ADD_POINTER command: the firmware adds the address it
// allocated src at to the size-byte (1, 2, 4 or 8) little-endian field at
// offset in dest.
func (l *Loader) AddPointer(dest, src string, offset uint32, size uint8) error {
	if err := l.check(dest); err != nil {
		return fmt.Errorf("loader ADD_POINTER destination: %w", err)
	}
	if err := l.check(src); err != nil {
		return fmt.Errorf("loader ADD_POINTER source: %w", err)
	}
	switch size {
	case 1, 2, 4, 8:
	default:
		return fmt.Errorf("loader ADD_POINTER %q to %q: field of %d bytes, want 1, 2, 4 or 8", dest, src, size)
	}
	if uint64(offset)+uint64(size) > 1<<32 {
		return fmt.Errorf("loader ADD_POINTER %q to %q: field at %#x of %d bytes ends past 4 GiB", dest, src, offset, size)
	}
	e := l.entry(cmdAddPointer)
	copy(e[argFile:], dest)
	copy(e[argFile2:], src)
	binary.LittleEndian.PutUint32(e[argAfter2:], offset)
	e[argAfter2+4] = size
	return nil
}

// AddChecksum adds an ADD_CHECKSUM command: the firmware makes the length
// bytes of file from start sum to 0 by changing the byte at result, which
// lies among them.
func (l *Loader) AddChecksum(file string, result, start, length uint32) error {
	if err := l.check(file); err != nil {
		return fmt.Errorf("loader ADD_CHECKSUM: %w", err)
	}
	if uint64(start)+uint64(length) > 1<<32 {
		return fmt.Errorf("loader ADD_CHECKSUM %q: range %#x+%#x ends past 4 GiB", file, start, length)
	}
	if result < start || uint64(result) >= uint64(start)+uint64(length) {
		return fmt.Errorf("loader ADD_CHECKSUM %q: checksum byte %#x outside its range %#x+%#x", file, result, start, length)
	}
	e := l.entry(cmdAddChecksum)
	copy(e[argFile:], file)
	binary.LittleEndian.PutUint32(e[argAfter1:], result)
	binary.LittleEndian.PutUint32(e[argAfter1+4:], start)
	binary.LittleEndian.PutUint32(e[argAfter1+8:], length)
	return nil
}

// Bytes returns the encoded commands, the contents of LoaderFile.
func (l *Loader) Bytes() []byte {
	return append([]byte{}, l.b...)
}

// check checks that file can be named by a command.
func (l *Loader) check(file string) error {
	if err := checkName(file); err != nil {
		return err
	}
	if !l.allocated[file] {
		return fmt.Errorf("file %q is not allocated by an earlier command", file)
	}
	return nil
}

// entry appends a zeroed entry for cmd and returns it.
func (l *Loader) entry(cmd uint32) []byte {
	n := len(l.b)
	l.b = append(l.b, make([]byte, loaderEntrySize)...)
	e := l.b[n:]
	binary.LittleEndian.PutUint32(e, cmd)
	return e
}
