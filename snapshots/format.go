package snapshots

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"

	digest "github.com/opencontainers/go-digest"
)

// Media and artifact types of a snapshot artifact.
const (
	// ArtifactType marks the snapshot's image manifest.
	ArtifactType = "application/vnd.bunkerbuild.snapshot.v2"
	// MediaTypeConfig is the config blob, the JSON encoding of [Config].
	MediaTypeConfig = "application/vnd.bunkerbuild.snapshot.config.v2+json"
	// MediaTypeVCPUState and MediaTypeDeviceState are the first two
	// layers: the VMM's vCPU state and the state of the devices the
	// resume profile keeps. The VMM defines their contents.
	MediaTypeVCPUState   = "application/vnd.bunkerbuild.vcpu-state.v1+json"
	MediaTypeDeviceState = "application/vnd.bunkerbuild.device-state.v1+json"
	// MediaTypeMemoryRaw and MediaTypeMemorySparse are memory chunks, one
	// layer each, in the order of [Memory.Chunks].
	MediaTypeMemoryRaw    = "application/vnd.bunkerbuild.memory.raw.v1"
	MediaTypeMemorySparse = "application/vnd.bunkerbuild.memory.sparse.v1"
	// MediaTypeDisk is a virtio-blk disk's raw image as it was at the
	// capture, one layer each after the memory chunks, in the order of
	// [Config.Disks].
	MediaTypeDisk = "application/vnd.bunkerbuild.disk.raw.v1"

	// SignatureArtifactType marks a signature manifest: an image manifest
	// whose subject is the snapshot manifest and whose one layer is an
	// Ed25519 signature (MediaTypeSignature) over that manifest's digest.
	SignatureArtifactType = "application/vnd.bunkerbuild.signature.v1"
	MediaTypeSignature    = "application/vnd.bunkerbuild.signature.ed25519.v1"

	// AnnotationKeyID names the signing key on a signature manifest, for
	// people; verification does not trust it.
	AnnotationKeyID = "dev.bunkerbuild.signature.key-id"

	// FormatName and FormatVersion are the config's "format" and "version".
	FormatName    = "bunkerbuild-snapshot"
	FormatVersion = 2

	// DefaultTag is the name the snapshot manifest has in index.json.
	DefaultTag = "latest"
)

// Memory encoding.
const (
	// PageSize is the granule of the sparse memory encoding.
	PageSize = 4096
	// ChunkSize is the span of guest-physical memory one memory layer
	// covers: regions are cut into chunks at multiples of it from their
	// start, and chunks of only zero pages are not stored.
	ChunkSize = 16 << 20
	// rawThreshold: a chunk with at most 1/rawThreshold of its pages zero
	// is stored raw (mappable copy-on-write), others sparse.
	rawThreshold = 16
)

// Limits enforced on reading, and on writing so that what is written can
// be read back.
const (
	MaxIndexSize    = 64 << 10 // bytes of index.json
	MaxManifestSize = 1 << 20  // bytes of the snapshot manifest
	MaxSigManifest  = 16 << 10 // bytes of a signature manifest
	MaxConfigSize   = 4 << 20  // bytes of the config
	MaxStateSize    = 64 << 20 // bytes of the vCPU or device state layer
	MaxIndexEntries = 64       // manifests in index.json
	MaxRegions      = 64       // guest memory regions
	MaxMemorySize   = 1 << 40  // bytes of guest memory
	MaxChunks       = MaxMemorySize / ChunkSize
	MaxDisks        = 16
	MaxDiskSize     = 1 << 40 // bytes of one disk image
	MaxVCPUs        = 1024
	MaxCPUIDEntries = 256
	MaxLabels       = 64
	MaxTextLen      = 1024 // bytes of a config string or label value
	MaxNameLen      = 128  // bytes of a label key
)

// Errors that opening an artifact wraps, for errors.Is.
var (
	ErrMalformed = errors.New("malformed")
	ErrTruncated = errors.New("truncated")
	ErrVersion   = errors.New("unsupported format version")
	ErrLimit     = errors.New("limit exceeded")
	ErrSignature = errors.New("signature does not verify")
	ErrUnsigned  = errors.New("no signature")
	ErrDigest    = errors.New("digest mismatch")
)

// blobPath returns the path of the blob d inside an OCI layout, after
// checking that d is a well-formed SHA-256 digest: a digest that is not
// cannot name a file outside blobs/sha256.
func blobPath(d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return "blobs/sha256/" + d.Encoded(), nil
}

func checkDigest(d digest.Digest) error {
	// Check the form before calling Digest methods: Algorithm panics on a
	// digest without a colon (found by FuzzConfig).
	if len(d) != len("sha256:")+64 || !strings.HasPrefix(string(d), "sha256:") {
		return fmt.Errorf("%w: digest %.80q is not a sha256 digest", ErrMalformed, string(d))
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%w: digest %.80q: %w", ErrMalformed, string(d), err)
	}
	return nil
}

// parallel calls f(0), ..., f(n-1), one goroutine per CPU, and returns
// when all have returned.
func parallel(n int, f func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
