package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/pipeline/resume"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// buildRecipe writes a recipe for the default guest, with a counter
// running in it, into dir, and a key pair; it returns the recipe's path
// and the artifact path it names.
func buildRecipe(t testing.TB, dir string) (recipeFile, artifact string) {
	t.Helper()
	guest := fmt.Sprintf("  kernel: %s\n  initrd: %s\n  cmdline: %s bunkerguest.count=/tmp/count",
		os.Getenv(envKernel), os.Getenv(envInitrd), guestCmdline)
	return writeRecipe(t, dir, "guest", guest, "")
}

// writeRecipe writes a key pair and recipe NAME.yaml into dir, with the
// given guest section and extra machine keys (indented YAML), 512 MiB and
// 2 vCPUs, booted when the guest tool says so; it returns the recipe's
// path and the artifact path it names, NAME.snap.
func writeRecipe(t testing.TB, dir, name, guest, machine string) (recipeFile, artifact string) {
	t.Helper()
	if _, err := snapshots.GenerateKey(filepath.Join(dir, "key"), filepath.Join(dir, "key.pub")); err != nil {
		t.Fatal(err)
	}
	recipeFile = filepath.Join(dir, name+".yaml")
	if machine != "" {
		machine = "\n" + machine
	}
	rec := fmt.Sprintf(`apiVersion: bunkerbuild/v1
name: %s
guest:
%s
machine:
  memory: 512M
  cpus: 2%s
booted:
  guest-signal: true
  settle: 1s
  timeout: 4m
output:
  path: %s.snap
  signing-key: key
`, name, guest, machine, name)
	if err := os.WriteFile(recipeFile, []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	return recipeFile, filepath.Join(dir, name+".snap")
}

// resumeArtifact resumes artifact on the minimal profile with opts in a
// session that the test closes; if the test failed by then, it logs the
// console, the VMM's log, the vCPUs and what more says.
func resumeArtifact(t *testing.T, ctx context.Context, artifact string, opts resume.Options, more func() string) *session.Session {
	t.Helper()
	pub, err := snapshots.LoadPublicKey(filepath.Join(filepath.Dir(artifact), "key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	cfg := machine.Config{Policy: bus.Deny, Log: log.New(&logBuf, "vmm: ", log.Lmicroseconds)}
	s, err := session.StartWith(ctx, cfg, func(cfg machine.Config) (*machine.Machine, error) {
		r, err := resume.ArtifactWith(artifact, pub, cfg, opts)
		if err != nil {
			return nil, err
		}
		return r.Machine, nil
	}, nil)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			extra := ""
			if more != nil {
				extra = more()
			}
			t.Logf("console after resume:\n%s\nVMM log:\n%s\nvCPUs:\n%s\n%s", s.Console.Output(), logBuf.String(), s.Machine.DebugState(), extra)
		}
		s.Close()
	})
	return s
}

// bunkerbuild runs the shipped binary and returns its stdout, stderr and
// exit status.
func bunkerbuild(ctx context.Context, args ...string) (stdout, stderr string, status int, err error) {
	cmd := exec.CommandContext(ctx, os.Getenv("BUNKERBUILD_BIN"), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return o.String(), e.String(), ee.ExitCode(), nil
	}
	return o.String(), e.String(), 0, err
}

// builtOnce holds the artifact buildShared made, for the tests that need
// one and not a fresh build each.
var builtOnce struct {
	sync.Once
	dir, artifact string
	err           error
}

// buildShared runs `bunkerbuild build` on the test recipe once per test
// binary and returns the directory (recipe, key, key.pub) and artifact.
func buildShared(t *testing.T, ctx context.Context) (dir, artifact string) {
	t.Helper()
	builtOnce.Do(func() {
		d, err := os.MkdirTemp("", "bunkerbuild-shared-")
		if err != nil {
			builtOnce.err = err
			return
		}
		recipeFile, a := buildRecipe(t, d)
		_, progress, status, err := bunkerbuild(ctx, "build", recipeFile)
		t.Logf("bunkerbuild build:\n%s", progress)
		if err == nil && status != 0 {
			err = fmt.Errorf("status %d", status)
		}
		builtOnce.dir, builtOnce.artifact, builtOnce.err = d, a, err
	})
	if builtOnce.err != nil {
		t.Fatalf("bunkerbuild build: %v", builtOnce.err)
	}
	return builtOnce.dir, builtOnce.artifact
}

// TestBuildAndResume runs `bunkerbuild build` on a recipe for the default
// guest, its boot stage in the sandbox; verifies and inspects the signed
// artifact; checks that tampered copies are refused before anything runs;
// then resumes two guests from it at once on the minimal VMM and checks
// that each carries on where the build left it.
func TestBuildAndResume(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir, artifact := buildShared(t, ctx)
	pubFile := filepath.Join(dir, "key.pub")
	var names []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	// The guest's only console is the serial port: there is no other
	// console's log.
	if want := []string{"guest.snap", "guest.snap.console.log", "guest.yaml", "key", "key.pub"}; !slices.Equal(names, want) {
		t.Errorf("after the build the directory holds %q; want the recipe, the keys, the artifact and its console log %q", names, want)
	}

	out, errOut, status, err := bunkerbuild(ctx, "verify", "--key", pubFile, artifact)
	if err != nil || status != 0 || !strings.Contains(out, ": OK") {
		t.Fatalf("bunkerbuild verify: status %d, %v\n%s%s", status, err, out, errOut)
	}
	out, errOut, status, err = bunkerbuild(ctx, "inspect", "--key", pubFile, artifact)
	t.Logf("bunkerbuild inspect:\n%s", out)
	if err != nil || status != 0 || !strings.Contains(out, "resumes on minimal") || !strings.Contains(out, "recipe") {
		t.Fatalf("bunkerbuild inspect: status %d, %v\n%s%s", status, err, out, errOut)
	}

	t.Run("refused", func(t *testing.T) { checkRefused(t, ctx, dir, artifact, pubFile) })

	pub, err := snapshots.LoadPublicKey(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	resume := func(name string) *session.Session {
		var logBuf bytes.Buffer
		cfg := machine.Config{SerialConsole: true, Log: log.New(&logBuf, "vmm: ", log.Lmicroseconds)}
		var res *resume.Resumed
		s, err := session.StartWith(ctx, cfg, func(cfg machine.Config) (*machine.Machine, error) {
			r, err := resume.Artifact(artifact, pub, cfg)
			if err != nil {
				return nil, err
			}
			res = r
			return r.Machine, nil
		}, nil)
		if err != nil {
			t.Fatalf("resume %s: %v", name, err)
		}
		t.Logf("resume %s: verified in %v, restored in %v", name, res.Verify.Round(time.Millisecond), res.Restore.Round(time.Millisecond))
		t.Cleanup(func() {
			if t.Failed() {
				vcpus := s.Machine.DebugState() // before Close, while the vCPUs exist
				t.Logf("console of %s after resume:\n%s\nVMM log:\n%s\nvCPUs:\n%s", name, s.Console.Output(), logBuf.String(), vcpus)
			}
			s.Close()
		})
		return s
	}
	a, b := resume("a"), resume("b")
	for _, s := range []*session.Session{a, b} {
		checkCarriesOn(t, ctx, s)
	}
	// The two guests share the artifact's pages, not their writes.
	run(t, ctx, a, "echo a > /tmp/who")
	run(t, ctx, b, "echo b > /tmp/who")
	if got := run(t, ctx, a, "cat /tmp/who"); got != "a" {
		t.Errorf("guest a reads /tmp/who as %q after guest b wrote its own", got)
	}
	for _, s := range []*session.Session{a, b} {
		checkResumedGuest(t, ctx, s, 2)
	}
}

// checkCarriesOn checks a resumed guest: the counter started before the
// capture is still counting and uptime goes on from where it was.
func checkCarriesOn(t *testing.T, ctx context.Context, s *session.Session) {
	t.Helper()
	readInt := func(cmd string) float64 {
		out := run(t, ctx, s, cmd)
		f, err := strconv.ParseFloat(strings.Fields(out + " x")[0], 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", cmd, out, err)
		}
		return f
	}
	c1, up1 := readInt("cat /tmp/count"), readInt("cat /proc/uptime")
	run(t, ctx, s, "sleep 1")
	c2, up2 := readInt("cat /tmp/count"), readInt("cat /proc/uptime")
	t.Logf("counter %v then %v; uptime %v s then %v s", c1, c2, up1, up2)
	// The build settled a second after the guest's tool said it was
	// ready, so the counter had passed 10 at the capture.
	if c1 < 10 {
		t.Errorf("the counter reads %v after resume: it did not run before the capture", c1)
	}
	// Two guests of 2 vCPUs share the lab's 2 emulated CPUs, so the
	// counter's ten a second is not a promise; that it moves is.
	if c2 <= c1 {
		t.Errorf("the counter stopped: %v, then %v a second later", c1, c2)
	}
	if up1 < 1 || up2-up1 < 0.9 || up2-up1 > 5 {
		t.Errorf("uptime went from %v to %v across a one-second sleep", up1, up2)
	}
}

// checkRefused runs `bunkerbuild resume` on tampered copies of the
// artifact: each is refused with exit status 2 and an error naming what is
// wrong, and no guest runs (no console output).
func checkRefused(t *testing.T, ctx context.Context, dir, artifact, pubFile string) {
	otherPub := filepath.Join(dir, "other.pub")
	if _, err := snapshots.GenerateKey(filepath.Join(dir, "other.key"), otherPub); err != nil {
		t.Fatal(err)
	}
	layers := func(path string) []string {
		a, err := snapshots.Open(path, mustPub(t, pubFile))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		var names []string
		for _, l := range a.Layers() {
			names = append(names, filepath.Join(path, "blobs/sha256", l.Digest.Encoded()))
		}
		return names
	}
	flip := func(file string) {
		f, err := os.OpenFile(file, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		b := []byte{0}
		f.ReadAt(b, st.Size()/2)
		b[0] ^= 0x40
		f.WriteAt(b, st.Size()/2)
	}
	for _, tc := range []struct {
		name, key, want string
		change          func(path string)
	}{
		{"flipped memory byte", pubFile, "digest mismatch", func(p string) { l := layers(p); flip(l[len(l)-1]) }},
		{"flipped vCPU state byte", pubFile, "digest mismatch", func(p string) { flip(layers(p)[0]) }},
		{"flipped manifest byte", pubFile, "digest mismatch", func(p string) { flip(manifestBlob(t, p)) }},
		{"flipped config byte", pubFile, "digest mismatch", func(p string) { flip(configBlob(t, p)) }},
		{"truncated memory blob", pubFile, "truncated", func(p string) {
			l := layers(p)
			st, _ := os.Stat(l[2])
			os.Truncate(l[2], st.Size()-4096)
		}},
		{"wrong key", otherPub, "signature does not verify", nil},
		{"no signature", pubFile, "no signature", func(p string) {
			b, _ := os.ReadFile(filepath.Join(p, "index.json"))
			i := bytes.LastIndex(b, []byte(`,{"mediaType"`))
			os.WriteFile(filepath.Join(p, "index.json"), append(b[:i:i], []byte("]}")...), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "copy.snap")
			if err := os.CopyFS(path, os.DirFS(artifact)); err != nil {
				t.Fatal(err)
			}
			if tc.change != nil {
				tc.change(path)
			}
			out, errOut, status, err := bunkerbuild(ctx, "resume", "--key", tc.key, path)
			if err != nil {
				t.Fatal(err)
			}
			if status != 2 || !strings.Contains(errOut, "refusing the artifact") || !strings.Contains(errOut, tc.want) {
				t.Errorf("resume of a tampered artifact: status %d, stderr %q; want status 2 and %q", status, errOut, tc.want)
			}
			if out != "" {
				t.Errorf("a guest ran: console output %q", out)
			}
			t.Logf("refused: %s", strings.TrimSpace(errOut))
		})
	}
}

// mustPub loads a public key file.
func mustPub(t testing.TB, path string) []byte {
	t.Helper()
	pub, err := snapshots.LoadPublicKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// manifestBlob and configBlob return the files of an artifact's snapshot
// manifest and config.
func manifestBlob(t *testing.T, path string) string {
	var idx ocispec.Index
	readJSONFile(t, filepath.Join(path, "index.json"), &idx)
	return filepath.Join(path, "blobs/sha256", idx.Manifests[0].Digest.Encoded())
}

func configBlob(t *testing.T, path string) string {
	var m ocispec.Manifest
	readJSONFile(t, manifestBlob(t, path), &m)
	return filepath.Join(path, "blobs/sha256", m.Config.Digest.Encoded())
}

func readJSONFile(t *testing.T, path string, v any) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}
