package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNoBootDevices shows the production host's code does not contain the
// boot-time devices, the boot stage's sandbox or the recipe pipeline.
func TestNoBootDevices(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := string(out)
	for _, pkg := range []string{
		"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy",
		"github.com/bunkerbuild/bunkerbuild/pipeline/isolate",
		"github.com/bunkerbuild/bunkerbuild/pipeline/recipe",
		"github.com/bunkerbuild/bunkerbuild/internal/lab",
	} {
		for _, line := range strings.Split(deps, "\n") {
			if line == pkg || strings.HasPrefix(line, pkg+"/") {
				t.Errorf("bunkerhost links %s", line)
			}
		}
	}
	if !strings.Contains(deps, "github.com/bunkerbuild/bunkerbuild/vmm/machine\n") {
		t.Error("bunkerhost does not link vmm/machine: the test is not looking at the right thing")
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "host.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := "apiVersion: bunkerhost/v1\ncache: {dir: cache, max: 1G}\nguests:\n  - name: web\n    artifact: reg.example/guests/web:v1\n    key: builder.pub\n"
	c, err := loadConfig(write(good))
	if err != nil {
		t.Fatal(err)
	}
	g := c.Guests[0]
	if g.Key != filepath.Join(dir, "builder.pub") || c.Cache.Dir != filepath.Join(dir, "cache") || g.Restart != "on-failure" || *g.MaxRestarts != 3 {
		t.Errorf("loaded %+v, guest %+v", c, g)
	}
	c, err = loadConfig(write(good + "    disks: {data: disks/web.img}\n    tap: tap-web\n    netns: /run/netns/web\n"))
	if err != nil {
		t.Fatal(err)
	}
	if g := c.Guests[0]; g.Disks["data"] != filepath.Join(dir, "disks", "web.img") || g.Tap != "tap-web" || g.Netns != "/run/netns/web" {
		t.Errorf("devices of guest %+v", g)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", good + "    colour: blue\n", "field colour not found"},
		{"wrong version", strings.Replace(good, "bunkerhost/v1", "v0", 1), `apiVersion "v0"`},
		{"no guests", "apiVersion: bunkerhost/v1\n", "no guests"},
		{"no key", strings.Replace(good, "    key: builder.pub\n", "", 1), "no key"},
		{"bad name", strings.Replace(good, "name: web", "name: Web_1", 1), `name "Web_1"`},
		{"twice", good + "  - name: web\n    artifact: x/y:z\n    key: k\n", "a second guest"},
		{"bad restart", good + "    restart: always\n", `restart "always"`},
		{"bad size", strings.Replace(good, "max: 1G", "max: lots", 1), "cache.max"},
		{"wrong type", good + "    max-restarts: many\n", "cannot unmarshal"},
		{"netns without tap", good + "    netns: /run/netns/x\n", "netns needs a tap"},
		{"disk without path", good + "    disks: {data: \"\"}\n", "want a disk ID and a path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(write(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// TestSupervise runs the supervisor against a stand-in for resume that
// fails twice and then powers off, and one whose guest needs a fresh boot.
func TestSupervise(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake")
	script := `#!/bin/sh
art="$(eval echo \${$#})"
n=$(cat "$art.count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$art.count"
echo "console of $art, run $n"
# A disk named with --disk ID=PATH must not exist: the real resume makes it.
for a in "$@"; do case "$a" in data=*) p="${a#data=}"; [ -e "$p" ] && exit 2; echo "run $n" > "$p";; esac; done
case "$art" in
*flaky) [ $n -le 2 ] && exit 1; exit 0 ;;
*reboots) exit 5 ;;
*fails) exit 1 ;;
esac
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	zero := 0
	cfg := &hostConfig{Cache: cacheConfig{Dir: dir, Max: "1G"}, Guests: []guestConfig{
		{Name: "flaky", Artifact: filepath.Join(dir, "flaky"), Key: "k", Restart: "on-failure", MaxRestarts: ptr(3),
			Disks: map[string]string{"data": filepath.Join(dir, "flaky-data.img")}},
		{Name: "reboots", Artifact: filepath.Join(dir, "reboots"), Key: "k", Restart: "on-failure", MaxRestarts: ptr(3)},
		{Name: "never", Artifact: filepath.Join(dir, "always-fails"), Key: "k", Restart: "never", MaxRestarts: &zero},
	}}
	backoffBase = time.Millisecond
	var out, log bytes.Buffer
	res := supervise(context.Background(), fake, cfg, &out, &log)
	t.Logf("log:\n%s\nconsole:\n%s", log.String(), out.String())
	want := map[string]result{
		"flaky":   {name: "flaky", status: 0, restarts: 2},
		"reboots": {name: "reboots", status: 5, restarts: 0},
		"never":   {name: "never", status: 1, restarts: 0},
	}
	for _, r := range res {
		if r != want[r.name] {
			t.Errorf("%s: %+v, want %+v", r.name, r, want[r.name])
		}
	}
	// Each restart started from a fresh disk; the previous run's is kept.
	for file, want := range map[string]string{"flaky-data.img": "run 3\n", "flaky-data.img.prev": "run 2\n"} {
		if b, err := os.ReadFile(filepath.Join(dir, file)); err != nil || string(b) != want {
			t.Errorf("%s holds %q (%v), want %q", file, b, err, want)
		}
	}
	if !strings.Contains(out.String(), "flaky| console of ") || !strings.Contains(log.String(), "needs a fresh boot") {
		t.Error("console lines are not prefixed with the guest, or the reboot is not explained")
	}
}

func ptr(n int) *int { return &n }
