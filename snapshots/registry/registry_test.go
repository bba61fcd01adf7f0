package registry

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bunkerbuild/bunkerbuild/internal/testregistry"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
)

var opts = Options{PlainHTTP: true}

func testKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

// artifact writes a signed artifact of 64 MiB of guest memory: pages of
// the given seed in the first half, and a chunk that differs by seed.
func artifact(t *testing.T, seed byte) string {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, 64<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	for p := 0; p < 32<<20; p += 4096 {
		copy(mem[p:], fmt.Sprintf("page %d", p))
	}
	for p := 48 << 20; p < 64<<20; p += 8192 {
		copy(mem[p:], fmt.Sprintf("seed %d page %d", seed, p))
	}
	c := snapshots.Contents{
		Config: snapshots.Config{Created: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), BootProfile: "full", ResumeProfile: "minimal",
			VCPUs: 1, CPUID: []snapshots.CPUIDEntry{{Function: 0}}},
		VCPUState: []byte(`{"vcpus":[]}`), DeviceState: []byte(`{}`),
		Memory: []snapshots.MemRegion{{GPA: 0, Data: mem}},
	}
	_, priv := testKey()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("guest-%d.snap", seed))
	if _, err := snapshots.Write(context.Background(), path, c, priv); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPushPull(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t)
	pub, _ := testKey()
	a1, a2 := artifact(t, 1), artifact(t, 2)
	ref := reg.Addr + "/guests/default:v1"

	desc, st, err := Push(ctx, a1, ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first push: %+v", st)
	// Everything but the 2-byte empty JSON config of the signature
	// manifest, which registries are expected to have.
	if st.BlobsMoved < st.Blobs-1 || st.BytesMoved < st.Bytes-2 {
		t.Errorf("first push moved %d of %d blobs, %d of %d bytes", st.BlobsMoved, st.Blobs, st.BytesMoved, st.Bytes)
	}
	// Unchanged: nothing is uploaded again.
	_, st, err = Push(ctx, a1, ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlobsMoved != 0 || st.BytesMoved != 0 {
		t.Errorf("re-push uploaded %d blobs, %d bytes", st.BlobsMoved, st.BytesMoved)
	}
	// A second build of the same guest shares the unchanged chunks.
	_, st2, err := Push(ctx, a2, reg.Addr+"/guests/default:v2", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second artifact: %+v", st2)
	if st2.BytesMoved >= st2.Bytes/2 {
		t.Errorf("the second artifact uploaded %d of %d bytes; its unchanged chunks should be shared", st2.BytesMoved, st2.Bytes)
	}

	for _, r := range []string{ref, reg.Addr + "/guests/default@" + desc.Digest.String()} {
		dst := filepath.Join(t.TempDir(), "pulled.snap")
		got, _, err := Pull(ctx, r, dst, pub, opts)
		if err != nil {
			t.Fatalf("pull %s: %v", r, err)
		}
		if got.Digest != desc.Digest {
			t.Errorf("pull %s: digest %s, pushed %s", r, got.Digest, desc.Digest)
		}
		a, err := snapshots.Open(dst, pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Verify(); err != nil {
			t.Fatal(err)
		}
		a.Close()
	}
	// A wrong key: the pull fails and leaves nothing.
	other := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	dir := t.TempDir()
	if _, _, err := Pull(ctx, ref, filepath.Join(dir, "x.snap"), other, opts); !errors.Is(err, snapshots.ErrSignature) {
		t.Errorf("pull with the wrong key: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a refused pull left %d entries", len(ents))
	}
}

// TestTamperedRegistryBlob changes a blob in the registry's storage: the
// pull is refused and the cache gets nothing.
func TestTamperedRegistryBlob(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t)
	pub, _ := testKey()
	a := artifact(t, 1)
	ref := reg.Addr + "/guests/default:v1"
	if _, _, err := Push(ctx, a, ref, opts); err != nil {
		t.Fatal(err)
	}
	art, err := snapshots.Open(a, pub)
	if err != nil {
		t.Fatal(err)
	}
	layers := art.Layers()
	art.Close()
	reg.Tamper(layers[len(layers)-1].Digest.String())
	c := &Cache{Dir: t.TempDir()}
	_, err = c.Fetch(ctx, ref, pub, opts)
	if err == nil {
		t.Fatal("a tampered blob was pulled")
	}
	t.Logf("refused: %v", err)
	if !strings.Contains(err.Error(), "digest") {
		t.Errorf("error %v does not say the digest is wrong", err)
	}
	if list, _ := c.List(); len(list) != 0 {
		t.Errorf("the cache holds %d artifacts after a refused pull", len(list))
	}
	if ents, _ := os.ReadDir(filepath.Join(c.Dir, "artifacts")); len(ents) != 0 {
		t.Errorf("the refused pull left %s in the cache", ents[0].Name())
	}
}

// TestRegistryDiesMidPush kills the registry after the first blob is
// uploaded: once it is back, the tag names nothing, and a new push
// completes and uploads only what is missing.
func TestRegistryDiesMidPush(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t)
	a := artifact(t, 1)
	ref := reg.Addr + "/guests/default:v1"
	var done atomic.Int32
	o := opts
	o.Progress = func(e Event) {
		if e.Kind == Done && done.Add(1) == 1 {
			reg.Stop()
		}
	}
	if _, _, err := Push(ctx, a, ref, o); err == nil {
		t.Fatal("the push succeeded with the registry killed")
	} else {
		t.Logf("push failed as it should: %v", err)
	}
	reg.Restart()
	repo, r, err := repository(ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Resolve(ctx, r.Reference); !IsNotFound(err) {
		t.Fatalf("after a failed push the tag resolves: %v", err)
	}
	_, st, err := Push(ctx, a, ref, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlobsMoved == st.Blobs {
		t.Errorf("the second push uploaded every blob again (%d)", st.Blobs)
	}
}

// TestCache covers the host side: fetch by tag and by digest, a pull
// killed midway leaving nothing trusted, fetching with the registry
// stopped, and pruning.
func TestCache(t *testing.T) {
	ctx := context.Background()
	reg := testregistry.Start(t)
	pub, _ := testKey()
	a1, a2 := artifact(t, 1), artifact(t, 2)
	ref1, ref2 := reg.Addr+"/guests/default:v1", reg.Addr+"/guests/default:v2"
	d1, _, err := Push(ctx, a1, ref1, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Push(ctx, a2, ref2, opts); err != nil {
		t.Fatal(err)
	}
	c := &Cache{Dir: t.TempDir()}

	// Killed midway: the registry dies after the first blob arrives.
	o := opts
	var n atomic.Int32
	o.Progress = func(e Event) {
		if e.Kind == Done && n.Add(1) == 1 {
			reg.Stop()
		}
	}
	if _, err := c.Fetch(ctx, ref1, pub, o); err == nil {
		t.Fatal("fetch succeeded with the registry killed")
	}
	if list, _ := c.List(); len(list) != 0 {
		t.Fatalf("an interrupted pull left %d trusted artifacts", len(list))
	}
	reg.Restart()

	f, err := c.Fetch(ctx, ref1, pub, opts)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cached || f.Digest != d1.Digest {
		t.Errorf("first fetch: %+v", f)
	}
	if f2, err := c.Fetch(ctx, ref1, pub, opts); err != nil || !f2.Cached || f2.Stats.BlobsMoved != 0 {
		t.Errorf("second fetch: %+v, %v", f2, err)
	}

	// With the registry stopped: by digest, and by tag from its last digest.
	reg.Stop()
	byDigest := reg.Addr + "/guests/default@" + d1.Digest.String()
	if f, err := c.Fetch(ctx, byDigest, pub, opts); err != nil || !f.Cached || f.Offline {
		t.Errorf("offline fetch by digest: %+v, %v", f, err)
	}
	if f, err := c.Fetch(ctx, ref1, pub, opts); err != nil || !f.Cached || !f.Offline {
		t.Errorf("offline fetch by tag: %+v, %v", f, err)
	}
	if _, err := c.Fetch(ctx, ref2, pub, opts); err == nil {
		t.Error("offline fetch of an uncached tag succeeded")
	}
	reg.Restart()

	// Pruning keeps the most recently used within the bound.
	if _, err := c.Fetch(ctx, ref2, pub, opts); err != nil {
		t.Fatal(err)
	}
	list, err := c.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("cache lists %d artifacts (%v), want 2", len(list), err)
	}
	removed, freed, err := c.Prune(list[0].Size)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != d1.Digest.String() || freed != list[1].Size {
		t.Errorf("prune removed %q, freed %d; want the older %s", removed, freed, d1.Digest)
	}
	if _, err := os.Stat(c.refFile(ref1)); !os.IsNotExist(err) {
		t.Errorf("the pruned artifact's tag is still recorded: %v", err)
	}
}
