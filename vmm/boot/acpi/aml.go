package acpi

import "fmt"

// A minimal AML encoder: just what the DSDT needs (ACPI 6.5, 20.2).

const (
	amlZeroOp       = 0x00
	amlOneOp        = 0x01
	amlNameOp       = 0x08
	amlBytePrefix   = 0x0a
	amlWordPrefix   = 0x0b
	amlDWordPrefix  = 0x0c
	amlQWordPrefix  = 0x0e
	amlPackageOp    = 0x12
	maxPackageItems = 255
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

// nameOp encodes Name(name, data). name is a 4-character NameSeg.
func nameOp(name string, data []byte) []byte {
	if len(name) != 4 {
		panic(fmt.Sprintf("AML NameSeg %q is not 4 characters", name))
	}
	b := append([]byte{amlNameOp}, name...)
	return append(b, data...)
}

// packageOp encodes Package() { elems... }.
func packageOp(elems ...[]byte) []byte {
	if len(elems) > maxPackageItems {
		panic("AML package has too many elements")
	}
	body := []byte{byte(len(elems))}
	for _, e := range elems {
		body = append(body, e...)
	}
	b := []byte{amlPackageOp}
	b = append(b, pkgLength(len(body))...)
	return append(b, body...)
}
