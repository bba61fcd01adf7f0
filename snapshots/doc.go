// Package snapshots reads and writes bunkerbuild's snapshot artifact: the
// state of a booted guest (vCPU, VM and device state, and guest RAM) in one
// signed file that a production host verifies before it resumes the guest.
//
// # Trust model
//
// An artifact is untrusted input until its signature verifies. The manifest
// (JSON) lists every blob with its offset, size and SHA-256 digest, and is
// signed with Ed25519; the signature is detached and covers the manifest's
// exact bytes. Verifying the signature and then each blob's digest therefore
// authenticates the whole artifact. [Open] verifies the signature before it
// decodes the manifest, and hands out blob contents only through readers that
// check the blob's digest: [Artifact.Blob] checks before it returns,
// [Artifact.OpenBlob] returns an error in place of io.EOF on a mismatch.
//
// Guest RAM is too large to verify before use, so [Artifact.RestoreMemory]
// writes it into the caller's memory while hashing it and checks the digest at
// the end. If it returns an error the caller's memory holds unverified bytes
// and the guest MUST NOT be resumed. The memory layout (the extent table) is
// a separate blob, verified in full before any byte is written, so even a
// tampered artifact writes only inside the regions the signed manifest names.
//
// # File format (version 1.0)
//
// An artifact is one file, all integers little-endian:
//
//	offset  size  field
//	0       8     magic "BUNKSNAP"
//	8       2     major version (1)
//	10      2     minor version (0)
//	12      4     flags (0)
//	16      8     file size
//	24      8     manifest offset
//	32      8     manifest size
//	40      8     signature offset
//	48      8     signature size (64)
//	56      8     reserved (0)
//	64      ...   blobs, at the offsets the manifest gives
//	...           manifest: canonical JSON (see [Manifest])
//	...           signature: Ed25519 over the manifest bytes
//
// The header is not signed; it only locates the manifest and signature, which
// are, and the signed manifest repeats the version, so a changed header field
// fails the signature, the version check or the layout checks. Readers refuse
// a major version other than [MajorVersion]; a minor version marks changes
// that readers of the same major version read correctly.
//
// The manifest is the encoding/json encoding of [Manifest], and readers
// re-encode what they decoded and require the same bytes, so one manifest has
// exactly one signed form (no duplicate keys, unknown fields or alternative
// spellings). Because unknown fields are refused, adding a manifest field
// needs a new major version. Blobs are listed sorted by name; their byte ranges may not
// overlap each other, the header, the manifest or the signature, and the file
// ends where the last of them ends.
//
// Guest RAM is stored sparsely as two reserved blobs. "memory/extents" is a
// table of 16-byte entries (guest-physical address, length), each a run of
// non-zero pages of [PageSize] bytes, sorted by address; "memory" is those
// runs' bytes, concatenated in table order, starting on a page boundary in
// the file. Zero pages are not stored: memory is restored into zero-filled
// destinations, such as a fresh anonymous mapping.
//
// # Why not tar
//
// A custom container keeps the parser small: one fixed header, one signed
// table of ranges, nothing else. Tar brings per-entry headers (unsigned unless
// the manifest repeats them), several extension formats (PAX, GNU long names
// and sparse files) that a verifier must either parse or reject, and 512-byte
// framing that a streaming sparse memory blob does not need. Blob ranges in
// the signed manifest also let a reader seek straight to a blob.
//
// # Limits
//
// Readers refuse, with [ErrLimit], manifests over [MaxManifestSize] bytes,
// more than [MaxBlobs] blobs, blob names over [MaxNameLen] bytes, memory with
// more than [MaxRegions] regions, more than [MaxMemorySize] bytes or more than
// [MaxExtents] extents. Allocations are bounded by these limits and by the
// file's size. [Artifact.Blob] reads blobs of up to [MaxBlobSize] bytes;
// larger ones are read with [Artifact.OpenBlob].
//
// # Keys
//
// Keys are PEM files: the private key PKCS #8 ("PRIVATE KEY", written mode
// 0600 and refused when group or others can read it), the public key PKIX
// ("PUBLIC KEY"), as OpenSSL writes them for Ed25519.
package snapshots
