package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/testregistry"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
)

// TestRegistryResume is the path from a build to a fleet, through the
// CLI: push the built artifact to a registry, push it again (nothing
// uploaded), pull it, resume it by tag and by digest through the cache,
// resume it from the cache with the registry stopped, and refuse it when
// a blob in the registry was changed.
func TestRegistryResume(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, artifact := buildShared(t, ctx)
	pub := filepath.Join(dir, "key.pub")
	reg := testregistry.Start(t)
	ref := reg.Addr + "/guests/default:v1"
	cache := t.TempDir()
	cli := func(want int, args ...string) string {
		t.Helper()
		out, errOut, status, err := bunkerbuild(ctx, args...)
		if err != nil || status != want {
			t.Fatalf("bunkerbuild %s: status %d, %v, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), status, err, want, out, errOut)
		}
		return out + errOut
	}
	out := cli(0, "push", "--key", pub, "--plain-http", artifact, ref)
	t.Logf("push: %s", out)
	m := regexp.MustCompile(`as (sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("push printed no digest: %s", out)
	}
	digestRef := reg.Addr + "/guests/default@" + m[1]
	if out := cli(0, "push", "--key", pub, "--plain-http", artifact, ref); !strings.Contains(out, ": 0 of ") {
		t.Errorf("a second push uploaded something: %s", out)
	}
	pulled := filepath.Join(t.TempDir(), "pulled.snap")
	cli(0, "pull", "--key", pub, "--plain-http", ref, pulled)
	cli(0, "verify", "--key", pub, pulled)

	resume := func(ref string) string {
		t.Helper()
		return cli(0, "resume", "--key", pub, "--plain-http", "--cache", cache, "--run", "cat /tmp/count", ref)
	}
	t.Logf("resume by tag: %s", resume(ref))
	if out := resume(digestRef); !strings.Contains(out, "in the cache") {
		t.Errorf("resume by digest after a pull did not use the cache: %s", out)
	}

	reg.Stop()
	if out := resume(digestRef); !strings.Contains(out, "in the cache") {
		t.Errorf("resume by digest with the registry stopped: %s", out)
	}
	if out := resume(ref); !strings.Contains(out, "cannot be reached") {
		t.Errorf("resume by tag with the registry stopped did not say it used the cache: %s", out)
	}
	reg.Restart()

	// A changed blob in the registry: pull and resume refuse it.
	a, err := snapshots.Open(artifact, mustPub(t, pub))
	if err != nil {
		t.Fatal(err)
	}
	layers := a.Layers()
	a.Close()
	reg.Tamper(layers[len(layers)-1].Digest.String())
	fresh := t.TempDir()
	out = cli(1, "resume", "--key", pub, "--plain-http", "--cache", fresh, "--run", "true", ref)
	if !strings.Contains(out, "digest") {
		t.Errorf("resume of a tampered registry blob: %s", out)
	}
	if ents, _ := os.ReadDir(filepath.Join(fresh, "artifacts")); len(ents) != 0 {
		t.Errorf("the refused pull left %s in the cache", ents[0].Name())
	}
}
