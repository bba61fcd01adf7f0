// Package registry moves snapshot artifacts between a build and the hosts
// that resume them through an OCI distribution registry, and keeps the
// artifacts a host pulled in a local content-addressed cache.
//
// An artifact is already an OCI image layout (package snapshots), so a push
// is a copy of its graph, the signature manifest included as a referrer of
// the snapshot manifest, to a repository; blobs the repository has are not
// uploaded again, and the manifest goes up only after every blob it names.
// A pull copies the graph back into a hidden directory, verifies the
// signature and every digest, and only then renames it into the cache: a
// pull that fails or is interrupted leaves nothing a resume would trust.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
)

// Options say how to reach a registry.
type Options struct {
	// PlainHTTP talks HTTP instead of HTTPS. Only for registries on a
	// trusted network, such as a test registry on loopback.
	PlainHTTP bool
	// Username and Password, when Username is set, are used instead of
	// the docker credentials ($DOCKER_CONFIG/config.json or
	// ~/.docker/config.json, as `docker login` and `oras login` write it).
	Username, Password string
	// Progress, if not nil, is told about each blob.
	Progress func(Event)
}

// Event reports a blob moving, or not, between the local side and the
// registry.
type Event struct {
	Kind       EventKind
	Descriptor ocispec.Descriptor
}

// EventKind says what happened to a blob.
type EventKind string

const (
	Started EventKind = "start" // transfer started
	Done    EventKind = "done"  // transferred
	Skipped EventKind = "skip"  // already there: nothing moved
)

// Stats counts what a push or pull moved.
type Stats struct {
	Blobs, BlobsMoved int   // blobs in the artifact, and those transferred
	Bytes, BytesMoved int64 // their sizes
}

// repository opens ref's repository with o's transport and credentials.
func repository(ref string, o Options) (*remote.Repository, registry.Reference, error) {
	r, err := registry.ParseReference(ref)
	if err != nil {
		return nil, r, fmt.Errorf("reference %q: %w (want HOST[:PORT]/REPOSITORY:TAG or @sha256:DIGEST)", ref, err)
	}
	repo, err := remote.NewRepository(ref)
	if err != nil {
		return nil, r, err
	}
	repo.PlainHTTP = o.PlainHTTP
	client := &auth.Client{Client: &http.Client{Transport: retry.NewTransport(http.DefaultTransport)}, Cache: auth.NewCache()}
	client.SetUserAgent("bunkerbuild")
	if o.Username != "" {
		client.Credential = auth.StaticCredential(r.Registry, auth.Credential{Username: o.Username, Password: o.Password})
	} else if store, err := credentials.NewStoreFromDocker(credentials.StoreOptions{}); err == nil {
		client.Credential = credentials.Credential(store)
	}
	repo.Client = client
	return repo, r, nil
}

// counter turns copy callbacks into Stats and Events.
type counter struct {
	progress          func(Event)
	blobs, moved      atomic.Int64
	bytes, bytesMoved atomic.Int64
}

func (c *counter) options() oras.CopyGraphOptions {
	emit := func(k EventKind, d ocispec.Descriptor) {
		if c.progress != nil {
			c.progress(Event{Kind: k, Descriptor: d})
		}
	}
	return oras.CopyGraphOptions{
		Concurrency: 2,
		PreCopy: func(_ context.Context, d ocispec.Descriptor) error {
			emit(Started, d)
			return nil
		},
		PostCopy: func(_ context.Context, d ocispec.Descriptor) error {
			c.blobs.Add(1)
			c.moved.Add(1)
			c.bytes.Add(d.Size)
			c.bytesMoved.Add(d.Size)
			emit(Done, d)
			return nil
		},
		OnCopySkipped: func(_ context.Context, d ocispec.Descriptor) error {
			c.blobs.Add(1)
			c.bytes.Add(d.Size)
			emit(Skipped, d)
			return nil
		},
	}
}

func (c *counter) stats() Stats {
	return Stats{Blobs: int(c.blobs.Load()), BlobsMoved: int(c.moved.Load()), Bytes: c.bytes.Load(), BytesMoved: c.bytesMoved.Load()}
}

// Push copies the artifact in dir to ref (HOST/REPO:TAG), with its
// signature as a referrer, and returns the snapshot manifest's digest.
// Blobs the repository already has are not uploaded. The artifact is read,
// not changed; check it with snapshots.Open first to push only what
// verifies.
func Push(ctx context.Context, dir, ref string, o Options) (ocispec.Descriptor, Stats, error) {
	repo, r, err := repository(ref, o)
	if err != nil {
		return ocispec.Descriptor{}, Stats{}, err
	}
	if _, err := r.Digest(); err == nil {
		return ocispec.Descriptor{}, Stats{}, fmt.Errorf("push to %s: give a tag, not a digest: the digest is the artifact's", ref)
	}
	src, err := oci.NewFromFS(ctx, os.DirFS(dir))
	if err != nil {
		return ocispec.Descriptor{}, Stats{}, fmt.Errorf("push %s: %w", dir, err)
	}
	c := &counter{progress: o.Progress}
	opts := oras.ExtendedCopyOptions{ExtendedCopyGraphOptions: oras.ExtendedCopyGraphOptions{CopyGraphOptions: c.options()}}
	// The signature manifest is a predecessor (referrer) of the snapshot
	// manifest: an extended copy takes it along.
	desc, err := oras.ExtendedCopy(ctx, src, snapshots.DefaultTag, repo, r.Reference, opts)
	if err != nil {
		return ocispec.Descriptor{}, c.stats(), fmt.Errorf("push %s to %s: %w", dir, ref, err)
	}
	return desc, c.stats(), nil
}

// Pull copies the artifact ref names into a new directory dst, verifies it
// against pub, and only then renames it into place: dst holds the complete,
// verified artifact, or nothing. It returns the snapshot manifest's
// descriptor.
func Pull(ctx context.Context, ref, dst string, pub []byte, o Options) (ocispec.Descriptor, Stats, error) {
	if _, err := os.Lstat(dst); err == nil {
		return ocispec.Descriptor{}, Stats{}, fmt.Errorf("pull to %s: it exists", dst)
	}
	repo, r, err := repository(ref, o)
	if err != nil {
		return ocispec.Descriptor{}, Stats{}, err
	}
	desc, err := repo.Resolve(ctx, r.Reference)
	if err != nil {
		return ocispec.Descriptor{}, Stats{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	st, err := pullInto(ctx, repo, desc, dst, pub, o)
	if err != nil {
		return ocispec.Descriptor{}, st, fmt.Errorf("pull %s: %w", ref, err)
	}
	return desc, st, nil
}

// pullInto fetches desc's graph and its signatures into a hidden
// directory beside dst, verifies it and renames it to dst.
func pullInto(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, dst string, pub []byte, o Options) (Stats, error) {
	if desc.MediaType != ocispec.MediaTypeImageManifest {
		return Stats{}, fmt.Errorf("%s is a %s, not a snapshot manifest", desc.Digest, desc.MediaType)
	}
	tmp, err := partialDir(dst)
	if err != nil {
		return Stats{}, err
	}
	defer os.RemoveAll(tmp) // after the rename, nothing is left to remove
	store, err := oci.NewStorage(tmp)
	if err != nil {
		return Stats{}, err
	}
	c := &counter{progress: o.Progress}
	if err := oras.CopyGraph(ctx, repo, store, desc, c.options()); err != nil {
		return c.stats(), err
	}
	sigs, err := registry.Referrers(ctx, repo, desc, snapshots.SignatureArtifactType)
	if err != nil {
		return c.stats(), fmt.Errorf("list signatures: %w", err)
	}
	if len(sigs) == 0 {
		return c.stats(), fmt.Errorf("%w: the registry has no signature for %s", snapshots.ErrUnsigned, desc.Digest)
	}
	for _, s := range sigs {
		if err := oras.CopyGraph(ctx, repo, store, s, c.options()); err != nil {
			return c.stats(), fmt.Errorf("fetch signature %s: %w", s.Digest, err)
		}
	}
	if _, err := snapshots.WriteIndex(tmp, desc, sigs); err != nil {
		return c.stats(), err
	}
	if pub != nil {
		a, err := snapshots.Open(tmp, pub)
		if err != nil {
			return c.stats(), err
		}
		_, err = a.VerifyCached() // hashes, and stamps what it verified
		a.Close()
		if err != nil {
			return c.stats(), err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return c.stats(), err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return c.stats(), err
	}
	return c.stats(), nil
}

// partialPrefix names the hidden directories pulls fill. fsutil puts the
// puller's PID after it, so that stale ones can be told apart and removed.
const partialPrefix = ".partial-"

// partialDir makes the hidden directory a pull to dst fills, beside it,
// after removing those of pulls that were killed.
func partialDir(dst string) (string, error) {
	fsutil.RemoveStale(filepath.Dir(dst), partialPrefix)
	return fsutil.OwnedDir(filepath.Dir(dst), partialPrefix)
}

// IsNotFound reports whether err says the registry has no such manifest
// or blob.
func IsNotFound(err error) bool { return errors.Is(err, errdef.ErrNotFound) }
