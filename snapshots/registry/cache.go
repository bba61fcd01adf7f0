package registry

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
)

// Cache is a host's local store of pulled artifacts:
//
//	DIR/artifacts/<hex>   one verified artifact per snapshot manifest digest
//	DIR/refs/<ref>        the digest a tag last resolved to (ref escaped)
//
// An artifact enters it only whole and verified (see Pull). Using one
// touches it, and Prune removes the least recently used beyond a size.
type Cache struct {
	Dir string
	// Max bounds the artifacts' total size in bytes after a fetch; 0 is
	// no bound. The artifact just fetched is never removed.
	Max int64
}

// Fetched says where a fetched artifact is and how it was found.
type Fetched struct {
	Dir     string
	Digest  digest.Digest
	Cached  bool  // already in the cache: nothing was pulled
	Offline bool  // the registry could not be reached; the tag's last digest was used
	Stats   Stats // what the pull moved
	Pruned  []string
	NetErr  error // why the registry could not be reached, when Offline
}

func (c *Cache) artifactDir(d digest.Digest) string {
	return filepath.Join(c.Dir, "artifacts", d.Encoded())
}

func (c *Cache) refFile(ref string) string {
	return filepath.Join(c.Dir, "refs", url.PathEscape(ref))
}

// Fetch returns the cached artifact ref names, pulling and verifying it
// against pub first if the cache lacks it. A ref by digest that is cached
// is used without touching the network; a ref by tag is resolved at the
// registry, and if the registry cannot be reached, the digest it last
// resolved to is used, if that artifact is cached.
func (c *Cache) Fetch(ctx context.Context, ref string, pub []byte, o Options) (*Fetched, error) {
	repo, r, err := repository(ref, o)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"artifacts", "refs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	f := &Fetched{}
	var desc ocispec.Descriptor // the manifest, once resolved at the registry
	d, derr := r.Digest()
	byTag := derr != nil
	if !byTag {
		f.Digest = d
	} else {
		var err error
		desc, err = repo.Resolve(ctx, r.Reference)
		switch {
		case err == nil:
			f.Digest = desc.Digest
		case IsNotFound(err) || ctx.Err() != nil:
			return nil, fmt.Errorf("resolve %s: %w", ref, err)
		default:
			b, rerr := os.ReadFile(c.refFile(ref))
			if rerr != nil {
				return nil, fmt.Errorf("resolve %s: %w (and the cache has no digest for it)", ref, err)
			}
			f.Digest, f.Offline, f.NetErr = digest.Digest(strings.TrimSpace(string(b))), true, err
			if f.Digest.Validate() != nil {
				return nil, fmt.Errorf("cache: %s holds no digest", c.refFile(ref))
			}
		}
	}
	f.Dir = c.artifactDir(f.Digest)
	if _, err := os.Stat(filepath.Join(f.Dir, "index.json")); err == nil {
		f.Cached = true
		now := time.Now()
		os.Chtimes(f.Dir, now, now) // recently used
	} else if f.Offline {
		return nil, fmt.Errorf("resolve %s: %w (the cache lacks %s, its last digest)", ref, f.NetErr, f.Digest)
	} else {
		if desc.Digest == "" {
			if desc, err = repo.Resolve(ctx, f.Digest.String()); err != nil {
				return nil, fmt.Errorf("resolve %s: %w", f.Digest, err)
			}
		}
		if f.Stats, err = pullInto(ctx, repo, desc, f.Dir, pub, o); err != nil {
			return nil, fmt.Errorf("pull %s: %w", ref, err)
		}
	}
	if byTag && !f.Offline {
		if err := fsutil.WriteBytes(c.refFile(ref), 0o644, []byte(f.Digest.String()+"\n")); err != nil {
			return nil, err
		}
	}
	if c.Max > 0 {
		f.Pruned, _, err = c.prune(c.Max, f.Digest)
		if err != nil {
			return f, err
		}
	}
	return f, nil
}

// Entry is a cached artifact.
type Entry struct {
	Digest digest.Digest
	Dir    string
	Size   int64
	Used   time.Time
	Refs   []string // tags that last resolved to it
}

// List returns the cached artifacts, most recently used first.
func (c *Cache) List() ([]Entry, error) {
	ents, err := os.ReadDir(filepath.Join(c.Dir, "artifacts"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	refs := c.refs()
	var out []Entry
	for _, e := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if !e.IsDir() || d.Validate() != nil {
			continue // partial pulls and strays
		}
		dir := filepath.Join(c.Dir, "artifacts", e.Name())
		st, err := os.Stat(dir)
		if err != nil {
			continue
		}
		size, err := dirSize(dir)
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{Digest: d, Dir: dir, Size: size, Used: st.ModTime(), Refs: refs[d]})
	}
	slices.SortFunc(out, func(a, b Entry) int { return b.Used.Compare(a.Used) })
	return out, nil
}

func (c *Cache) refs() map[digest.Digest][]string {
	m := map[digest.Digest][]string{}
	ents, _ := os.ReadDir(filepath.Join(c.Dir, "refs"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(c.Dir, "refs", e.Name()))
		ref, uerr := url.PathUnescape(e.Name())
		if err == nil && uerr == nil {
			d := digest.Digest(strings.TrimSpace(string(b)))
			m[d] = append(m[d], ref)
		}
	}
	return m
}

// Prune removes what killed pulls left, then the least recently used
// artifacts until the rest take at most max bytes, and the tags that named
// them. It returns the digests removed and the bytes freed.
func (c *Cache) Prune(max int64) ([]string, int64, error) { return c.prune(max, "") }

func (c *Cache) prune(max int64, keep digest.Digest) ([]string, int64, error) {
	fsutil.RemoveStale(filepath.Join(c.Dir, "artifacts"), partialPrefix)
	list, err := c.List()
	if err != nil {
		return nil, 0, err
	}
	var total int64
	for _, e := range list {
		total += e.Size
	}
	var removed []string
	var freed int64
	refs := c.refs()
	for i := len(list) - 1; i >= 0 && total > max; i-- {
		e := list[i]
		if e.Digest == keep {
			continue
		}
		if err := os.RemoveAll(e.Dir); err != nil {
			return removed, freed, err
		}
		for _, ref := range refs[e.Digest] {
			os.Remove(c.refFile(ref))
		}
		total -= e.Size
		freed += e.Size
		removed = append(removed, e.Digest.String())
	}
	return removed, freed, nil
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}
