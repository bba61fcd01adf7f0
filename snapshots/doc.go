// Package snapshots reads and writes bunkerbuild's snapshot artifact: the
// state of a booted guest (vCPU and device state, and guest RAM) as a
// signed OCI image layout, which a production host verifies before it
// resumes the guest.
//
// # Layout (format version 2)
//
// An artifact is a directory holding an OCI image layout (image-spec 1.1):
//
//	oci-layout            {"imageLayoutVersion": "1.0.0"}
//	index.json            the snapshot manifest, tagged "latest", and its
//	                      signature manifest
//	blobs/sha256/<hex>    every blob, named by its SHA-256 digest
//
// The snapshot manifest (artifactType [ArtifactType]) names:
//
//   - a config blob ([MediaTypeConfig]), the JSON encoding of [Config]: the
//     format version, the boot and resume profiles, the inventory digest,
//     the vCPU count, vCPU 0's CPUID, the memory layout and the list of
//     stored memory chunks, and the recipe, kernel and initramfs by digest;
//   - layer 0, the vCPU state, and layer 1, the device state, as the VMM
//     encodes them (vmm/machine.State.MarshalLayers);
//   - layers 2 onwards, guest memory: one layer per stored chunk, in the
//     order of [Memory.Chunks];
//   - then the guest's disks ([MediaTypeDisk]), one raw image each, in the
//     order of [Config.Disks], as they were at the capture. The guest's page
//     cache in memory matches them, so a resume must start from exactly
//     these bytes: [Artifact.CopyDisk] makes a writable copy (sparse, its
//     digest checked again), and [Artifact.OpenDisk] serves a read-only disk
//     from the blob itself.
//
// Guest memory is cut into chunks of [ChunkSize] bytes from the start of
// each RAM region (the last chunk of a region may be shorter). A chunk of
// only zero pages is not stored. A chunk with at most one page in 16 zero
// is stored raw ([MediaTypeMemoryRaw]): its bytes. Any other chunk is
// stored sparse ([MediaTypeMemorySparse]): one header page whose first
// bytes are a bitmap of the chunk's pages (bit i%8 of byte i/8 set when
// page i is stored; the rest of the header zero), then the stored pages in
// order. Which encoding a chunk has follows from its size and its count of
// stored pages, both in the config, and so does its layer's size; the
// reader checks both. Every stored page sits at a page-aligned offset of
// its blob, so a resume maps the pages copy-on-write instead of copying
// them, and guests resumed from one artifact share the page cache's copy
// of every page they have not written. Chunks make the blobs of two builds
// of one recipe share what did not change, for a registry.
//
// # Signature
//
// The signature manifest (artifactType [SignatureArtifactType]) has the
// snapshot manifest as its subject, the empty JSON object as its config,
// and one layer ([MediaTypeSignature]): an Ed25519 signature, 64 bytes,
// over the string "bunkerbuild snapshot signature v1\n" followed by the
// snapshot manifest's digest ("sha256:..."). A registry keeps it as a
// referrer of the snapshot; OpenSSL can check it (see TestOpenSSLInterop).
// The signature covers the manifest's digest, the manifest covers the
// config's and every layer's digest, so a verified signature and verified
// digests authenticate the whole artifact. index.json and oci-layout are
// not signed: they only point at blobs, and what they point at is checked.
//
// # Trust model
//
// An artifact is untrusted input until its signature verifies. [Open]
// reads index.json and the signature manifests (small, bounded), checks a
// signature by the given key over the snapshot manifest's digest, and only
// then reads the manifest, checks its digest, decodes it strictly (unknown
// fields are errors) and checks its shape; then the config, by digest,
// strictly, with every field validated (sizes, counts, alignment, that the
// chunks tile the regions, that the layers match the chunks). Digests must
// be SHA-256 in canonical form, so a manifest cannot name a file outside
// blobs/sha256; descriptors with URLs or embedded data are refused; files
// are opened through an [os.Root], so a symbolic link cannot lead outside
// the artifact. [Artifact.Verify] hashes every layer (in parallel) and
// checks each sparse chunk's header; [Artifact.RestoreMemory] refuses to
// run before it has.
//
// Hashing every layer at every resume costs what reading the artifact
// costs. [Artifact.VerifyCached] skips it when the artifact holds a stamp
// ([StampFile]) that this host wrote after hashing, and the stamp, the
// directories and every layer are private to this user or root and
// unchanged since (same device, inode, size and change time, which only
// the kernel sets). The signature, manifest and config are checked every
// time.
//
// Mapping a blob copy-on-write means a later write to the blob's file
// would show in the guest's not-yet-written pages, so RestoreMemory maps
// only files that neither group nor others can write and that belong to
// root or to the user resuming; the artifact's directory should be as
// protected (a production host's artifact cache is).
//
// # Writing
//
// [Write] builds the layout in a hidden directory beside the output
// (".NAME.partial-PID-RANDOM"), writes index.json last, syncs every file
// and directory, and renames the directory into place (exchanging it with
// an earlier artifact atomically). A cancelled or failed write removes its
// directory; one left by a killed writer is removed by the next write to
// the same output. So the output path holds nothing, the old artifact or
// the complete new one, never something that looks like a valid artifact
// but is not.
//
// # Limits
//
// Readers refuse, with [ErrLimit] or [ErrMalformed], index files over
// [MaxIndexSize], manifests over [MaxManifestSize], configs over
// [MaxConfigSize], state layers over [MaxStateSize], more than
// [MaxIndexEntries] manifests, [MaxRegions] regions, [MaxChunks] chunks or
// [MaxCPUIDEntries] CPUID entries, and memory over [MaxMemorySize].
//
// # Keys
//
// Keys are PEM files: the private key PKCS #8 ("PRIVATE KEY", written mode
// 0600 and refused when group or others can read it), the public key PKIX
// ("PUBLIC KEY"), as OpenSSL writes them for Ed25519.
package snapshots
