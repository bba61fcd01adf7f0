package acpi

import (
	"fmt"
	"strings"
)

// A minimal AML encoder: just what the DSDT needs (ACPI 6.5, 20.2).

const (
	amlZeroOp        = 0x00
	amlOneOp         = 0x01
	amlNameOp        = 0x08
	amlBytePrefix    = 0x0a
	amlWordPrefix    = 0x0b
	amlDWordPrefix   = 0x0c
	amlQWordPrefix   = 0x0e
	amlScopeOp       = 0x10
	amlBufferOp      = 0x11
	amlPackageOp     = 0x12
	amlDualNamePfx   = 0x2e // DualNamePrefix: two NameSegs follow
	amlMultiNamePfx  = 0x2f // MultiNamePrefix: a SegCount byte, then that many NameSegs
	amlRootChar      = 0x5c // '\'
	amlParentPfxChar = 0x5e // '^'
	amlExtOpPrefix   = 0x5b
	amlDeviceOp      = 0x82 // after ExtOpPrefix
	amlNullName      = 0x00
	maxPackageItems  = 255
	maxNameSegs      = 255
)

// amlInteger encodes v in the shortest ComputationalData form.
func amlInteger(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return []byte{amlWordPrefix, byte(v), byte(v >> 8)}
	case v <= 0xffffffff:
		return []byte{amlDWordPrefix, byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	}
	b := []byte{amlQWordPrefix}
	for i := range 8 {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}

// pkgLength encodes the PkgLength of an object whose contents after the
// PkgLength are n bytes long; the encoded length counts itself.
func pkgLength(n int) []byte {
	if n+1 <= 0x3f {
		return []byte{byte(n + 1)}
	}
	for size := 2; size <= 4; size++ {
		total := n + size
		if total < 1<<(4+8*(size-1)) {
			b := []byte{byte(size-1)<<6 | byte(total&0xf)}
			for i := 1; i < size; i++ {
				b = append(b, byte(total>>(4+8*(i-1))))
			}
			return b
		}
	}
	panic(fmt.Sprintf("AML object of %d bytes is too long for a PkgLength", n))
}

// amlDWord encodes v as a DWordConst, whatever its size: for values whose
// width is part of their meaning, such as an EISA ID.
func amlDWord(v uint32) []byte {
	return []byte{amlDWordPrefix, byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
}

// nameString encodes an ASL name path as a NameString (ACPI 6.5, 20.2.2):
// an optional root prefix '\' or parent prefixes '^', then NameSegs
// separated by dots. A segment shorter than 4 characters is padded with
// '_', as ASL does ("_SB" is "_SB_"). A path of prefixes alone, such as
// "\", ends in a NullName.
func nameString(path string) []byte {
	var b []byte
	rest := path
	if strings.HasPrefix(rest, `\`) {
		b = append(b, amlRootChar)
		rest = rest[1:]
	} else {
		for strings.HasPrefix(rest, "^") {
			b = append(b, amlParentPfxChar)
			rest = rest[1:]
		}
	}
	if rest == "" {
		if len(b) == 0 {
			panic("AML NameString is empty")
		}
		return append(b, amlNullName)
	}
	segs := strings.Split(rest, ".")
	switch {
	case len(segs) == 2:
		b = append(b, amlDualNamePfx)
	case len(segs) > maxNameSegs:
		panic(fmt.Sprintf("AML NameString %q has more than %d segments", path, maxNameSegs))
	case len(segs) > 2:
		b = append(b, amlMultiNamePfx, byte(len(segs)))
	}
	for _, s := range segs {
		b = append(b, nameSeg(path, s)...)
	}
	return b
}

// nameSeg checks one segment of path (LeadNameChar NameChar*, at most 4
// characters, upper case) and pads it to 4 characters with '_'.
func nameSeg(path, s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		panic(fmt.Sprintf("AML name %q: segment %q is not 1 to 4 characters", path, s))
	}
	for i, c := range []byte(s) {
		if !(c == '_' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			panic(fmt.Sprintf("AML name %q: segment %q has an invalid character %q", path, s, c))
		}
	}
	return []byte(s + strings.Repeat("_", 4-len(s)))
}

// nameOp encodes Name(name, data).
func nameOp(name string, data []byte) []byte {
	b := append([]byte{amlNameOp}, nameString(name)...)
	return append(b, data...)
}

// pkg returns op, then the PkgLength of the rest, then the rest: head
// (a name, a size) followed by the concatenated terms.
func pkg(op []byte, head []byte, terms ...[]byte) []byte {
	body := append([]byte(nil), head...)
	for _, t := range terms {
		body = append(body, t...)
	}
	b := append([]byte(nil), op...)
	b = append(b, pkgLength(len(body))...)
	return append(b, body...)
}

// scopeOp encodes Scope(path) { terms... }: DefScope, ACPI 6.5, 20.2.5.1.
func scopeOp(path string, terms ...[]byte) []byte {
	return pkg([]byte{amlScopeOp}, nameString(path), terms...)
}

// deviceOp encodes Device(path) { terms... }: DefDevice, ACPI 6.5, 20.2.5.2.
func deviceOp(path string, terms ...[]byte) []byte {
	return pkg([]byte{amlExtOpPrefix, amlDeviceOp}, nameString(path), terms...)
}

// bufferOp encodes Buffer() { data }: DefBuffer, ACPI 6.5, 20.2.5.4;
// the BufferSize is the data's length.
func bufferOp(data []byte) []byte {
	return pkg([]byte{amlBufferOp}, amlInteger(uint64(len(data))), data)
}

// eisaID compresses a 7-character EISA ID, three upper-case letters and
// four hex digits, as ASL's EISAID() macro does (ACPI 6.5, 19.6): each letter
// is 5 bits ('A' is 1), packed big-endian into the first two bytes, then
// the digits, two to a byte; the four bytes are read as a little-endian
// integer. "PNP0A03" is 0x030AD041.
func eisaID(id string) uint32 {
	if len(id) != 7 {
		panic(fmt.Sprintf("EISA ID %q is not 7 characters", id))
	}
	var b [4]byte
	var letters uint16
	for _, c := range []byte(id[:3]) {
		if c < 'A' || c > 'Z' {
			panic(fmt.Sprintf("EISA ID %q: %q is not an upper-case letter", id, c))
		}
		letters = letters<<5 | uint16(c-'@')
	}
	b[0], b[1] = byte(letters>>8), byte(letters)
	for i, c := range []byte(id[3:]) {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			panic(fmt.Sprintf("EISA ID %q: %q is not an upper-case hex digit", id, c))
		}
		b[2+i/2] |= d << (4 * (1 - i%2))
	}
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// Resource data (ACPI 6.5, 6.4): the descriptors of a ResourceTemplate.
const (
	rdIOPort        = 0x47 // small item 0x08, length 7 (6.4.2.5)
	rdEndTag        = 0x79 // small item 0x0f, length 1 (6.4.2.9)
	rdDWordAddr     = 0x87 // large item 0x07 (6.4.3.5.2)
	rdDWordAddrLen  = 23
	rdWordAddr      = 0x88 // large item 0x08 (6.4.3.5.3)
	rdWordAddrLen   = 13
	ioDecode16      = 1 << 0 // IO port information: decodes 16 address bits, not 10
	rtMemory        = 0      // address space resource types (1 is I/O)
	rtBusNumber     = 2
	addrConsumer    = 1 << 0 // general flags: clear for ResourceProducer
	addrSubDecode   = 1 << 1 // clear for PosDecode
	addrMinFixed    = 1 << 2
	addrMaxFixed    = 1 << 3
	memReadWrite    = 1 << 0 // memory type-specific flags: clear for ReadOnly
	memNonCacheable = 0 << 1 // _MEM, bits 2:1
)

// ioPort encodes IO(Decode16 or Decode10, min, max, align, length).
func ioPort(decode16 bool, min, max uint16, align, length uint8) []byte {
	var info byte
	if decode16 {
		info = ioDecode16
	}
	return []byte{rdIOPort, info, byte(min), byte(min >> 8), byte(max), byte(max >> 8), align, length}
}

// addrSpace is the content of a Word, DWord or QWord Address Space
// Descriptor: _GRA, _MIN, _MAX, _TRA and _LEN, in that order.
type addrSpace struct {
	typ, flags, typeFlags       uint8
	gran, min, max, tra, length uint64
}

// check panics on a fixed size, fixed location range (_MIF and _MAF set,
// _LEN not 0) that the valid combinations of ACPI 6.5, 6.4.3.5 rule out.
func (a addrSpace) check() {
	if a.flags&(addrMinFixed|addrMaxFixed) == addrMinFixed|addrMaxFixed && a.length != 0 &&
		(a.gran != 0 || a.max < a.min || a.max-a.min+1 != a.length) {
		panic(fmt.Sprintf("AML address space descriptor %+v: a fixed range needs _GRA 0 and _LEN = _MAX-_MIN+1", a))
	}
}

// word encodes a as a Word Address Space Descriptor.
func (a addrSpace) word() []byte {
	a.check()
	b := []byte{rdWordAddr, rdWordAddrLen, 0, a.typ, a.flags, a.typeFlags}
	for _, v := range []uint64{a.gran, a.min, a.max, a.tra, a.length} {
		if v > 0xffff {
			panic(fmt.Sprintf("AML Word Address Space Descriptor %+v: %#x does not fit 16 bits", a, v))
		}
		b = le.AppendUint16(b, uint16(v))
	}
	return b
}

// dword encodes a as a DWord Address Space Descriptor.
func (a addrSpace) dword() []byte {
	a.check()
	b := []byte{rdDWordAddr, rdDWordAddrLen, 0, a.typ, a.flags, a.typeFlags}
	for _, v := range []uint64{a.gran, a.min, a.max, a.tra, a.length} {
		if v > 0xffffffff {
			panic(fmt.Sprintf("AML DWord Address Space Descriptor %+v: %#x does not fit 32 bits", a, v))
		}
		b = le.AppendUint32(b, uint32(v))
	}
	return b
}

// resourceTemplate encodes ResourceTemplate() { descs... }: a buffer of
// the descriptors and an End Tag whose checksum byte is 0, which means
// the sum is not checked (6.4.2.9), as iasl writes it.
func resourceTemplate(descs ...[]byte) []byte {
	var b []byte
	for _, d := range descs {
		b = append(b, d...)
	}
	return bufferOp(append(b, rdEndTag, 0))
}

// packageOp encodes Package() { elems... }.
func packageOp(elems ...[]byte) []byte {
	if len(elems) > maxPackageItems {
		panic("AML package has too many elements")
	}
	return pkg([]byte{amlPackageOp}, []byte{byte(len(elems))}, elems...)
}
