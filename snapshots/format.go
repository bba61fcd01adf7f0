package snapshots

import (
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Format versions this package writes and reads.
const (
	MajorVersion = 1
	MinorVersion = 0
)

// FormatName is the manifest's "format" field. Because the signature covers
// the manifest, which starts with it, a signature made by the same key over
// anything that is not a snapshot manifest does not verify as one.
const FormatName = "bunkerbuild-snapshot"

// Limits enforced on reading (and writing, so that what is written can be
// read back).
const (
	MaxManifestSize = 1 << 20  // bytes of manifest JSON
	MaxBlobs        = 1024     // blobs, the two memory blobs included
	MaxNameLen      = 128      // bytes of a blob or label name
	MaxBlobSize     = 64 << 20 // bytes of a blob that [Artifact.Blob] and [Writer.AddBlob] take
	MaxRegions      = 64       // guest memory regions
	MaxMemorySize   = 1 << 40  // bytes of guest memory, all regions together
	MaxExtents      = 1 << 23  // memory extents: enough for 64 GiB with every other page zero
	MaxVCPUs        = 1024
	MaxLabels       = 64
	MaxTextLen      = 1024 // bytes of a metadata string or label value
)

// PageSize is the granule of the sparse memory encoding.
const PageSize = 4096

// Reserved blob names for guest memory.
const (
	MemoryBlob        = "memory"
	MemoryExtentsBlob = "memory/extents"
)

const (
	magic         = "BUNKSNAP"
	headerSize    = 64
	extentSize    = 16
	signatureSize = ed25519.SignatureSize
)

// Errors that reading an artifact wraps, for errors.Is.
var (
	ErrMalformed = errors.New("malformed")
	ErrTruncated = errors.New("truncated")
	ErrVersion   = errors.New("unsupported format version")
	ErrLimit     = errors.New("limit exceeded")
	ErrSignature = errors.New("signature does not verify")
	ErrDigest    = errors.New("digest mismatch")
)

// header is the fixed-size start of an artifact file.
type header struct {
	major, minor  uint16
	flags         uint32
	fileSize      uint64
	manifestOff   uint64
	manifestSize  uint64
	signatureOff  uint64
	signatureSize uint64
	reserved      uint64
}

func (h *header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, magic)
	le := binary.LittleEndian
	le.PutUint16(b[8:], h.major)
	le.PutUint16(b[10:], h.minor)
	le.PutUint32(b[12:], h.flags)
	le.PutUint64(b[16:], h.fileSize)
	le.PutUint64(b[24:], h.manifestOff)
	le.PutUint64(b[32:], h.manifestSize)
	le.PutUint64(b[40:], h.signatureOff)
	le.PutUint64(b[48:], h.signatureSize)
	le.PutUint64(b[56:], h.reserved)
	return b
}

// parseHeader decodes b, which is headerSize bytes, checking only what does
// not depend on the file: magic, version and zero fields.
func parseHeader(b []byte) (header, error) {
	if string(b[:8]) != magic {
		return header{}, fmt.Errorf("%w: bad magic %q: not a bunkerbuild snapshot artifact", ErrMalformed, b[:8])
	}
	le := binary.LittleEndian
	h := header{
		major:         le.Uint16(b[8:]),
		minor:         le.Uint16(b[10:]),
		flags:         le.Uint32(b[12:]),
		fileSize:      le.Uint64(b[16:]),
		manifestOff:   le.Uint64(b[24:]),
		manifestSize:  le.Uint64(b[32:]),
		signatureOff:  le.Uint64(b[40:]),
		signatureSize: le.Uint64(b[48:]),
		reserved:      le.Uint64(b[56:]),
	}
	if h.major != MajorVersion {
		return header{}, fmt.Errorf("%w %d.%d: this build reads major version %d", ErrVersion, h.major, h.minor, MajorVersion)
	}
	if h.flags != 0 {
		return header{}, fmt.Errorf("%w: header flags %#x, want 0", ErrMalformed, h.flags)
	}
	if h.reserved != 0 {
		return header{}, fmt.Errorf("%w: header reserved field %#x, want 0", ErrMalformed, h.reserved)
	}
	return h, nil
}

// Digest is a SHA-256 digest, written in JSON as 64 lowercase hex digits.
type Digest [32]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. It accepts exactly 64
// lowercase hex digits.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 2*len(d) {
		return fmt.Errorf("digest is %d characters, want %d", len(b), 2*len(d))
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("digest %.64q: not lowercase hex", b)
		}
	}
	_, err := hex.Decode(d[:], b)
	return err
}

// ValidName reports whether name can name a blob: 1 to [MaxNameLen] bytes of
// '/'-separated segments, each a lowercase letter or digit followed by
// lowercase letters, digits, '.', '_' or '-'. Examples: "vcpu/0",
// "vm/irqchip", "devices/serial0".
func ValidName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name is %d bytes, over %d", len(name), MaxNameLen)
	}
	for seg := range strings.SplitSeq(name, "/") {
		if seg == "" {
			return fmt.Errorf("name %q has an empty segment", name)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')
			if !ok {
				return fmt.Errorf("name %q: byte %q not allowed (segments are [a-z0-9][a-z0-9._-]*)", name, c)
			}
		}
	}
	return nil
}

// reservedName reports whether name is kept for the memory blobs.
func reservedName(name string) bool {
	return name == MemoryBlob || strings.HasPrefix(name, MemoryBlob+"/")
}
