// Package testregistry runs Debian's docker-registry (the CNCF
// distribution registry) on loopback for tests, storing into a directory
// the test can reach into.
package testregistry

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Registry is a running registry. Addr is its host:port, for references.
type Registry struct {
	Addr    string
	Storage string

	t      testing.TB
	bin    string
	config string
	cmd    *exec.Cmd
	logs   bytes.Buffer
}

// Start starts a registry on a free loopback port; the test's cleanup
// stops it. It fails the test if docker-registry is not installed
// (scripts/setup-debian installs it).
func Start(t testing.TB) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry is not installed (apt-get install docker-registry; scripts/setup-debian does): %v", err)
	}
	dir := t.TempDir()
	r := &Registry{t: t, bin: bin, Storage: filepath.Join(dir, "storage"), config: filepath.Join(dir, "config.yml")}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Addr = l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", r.Storage, r.Addr)
	if err := os.WriteFile(r.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r.Restart()
	t.Cleanup(r.Stop)
	return r
}

// Restart starts the registry again (after Stop), on the same port and
// storage, and waits until it answers.
func (r *Registry) Restart() {
	r.Stop()
	r.cmd = exec.Command(r.bin, "serve", r.config)
	r.cmd.Stdout, r.cmd.Stderr = &r.logs, &r.logs
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("registry did not start: %v\n%s", err, r.logs.String())
		}
	}
}

// Stop kills the registry, as a crash would.
func (r *Registry) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// BlobFile is where the registry stores the blob with digest d.
func (r *Registry) BlobFile(d string) string {
	hex := strings.TrimPrefix(d, "sha256:")
	return filepath.Join(r.Storage, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
}

// Tamper flips a byte in the middle of a stored blob and restarts the
// registry so that no cache of it survives.
func (r *Registry) Tamper(d string) {
	f := r.BlobFile(d)
	b, err := os.ReadFile(f)
	if err != nil {
		r.t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(f, b, 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.Restart()
}
