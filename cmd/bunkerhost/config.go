package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/bunkerbuild/bunkerbuild/internal/units"
)

// hostConfig is a host config file:
//
//	apiVersion: bunkerhost/v1
//	cache: {dir: /var/cache/bunkerhost, max: 20G}   # optional
//	registry: {plain-http: false}                  # optional
//	guests:
//	  - name: web
//	    artifact: registry.example.com/guests/web:v3   # or a local directory
//	    key: /etc/bunkerhost/builder.pub
//	    console-log: /var/log/bunkerhost/web.log       # optional; default stdout
//	    restart: on-failure                            # or never
//	    max-restarts: 3
//	    disks: {data: /var/lib/bunkerhost/web-data.img}  # optional: writable copies to keep, by disk ID
//	    tap: tap-web                                     # optional: the NIC's tap
//	    netns: /run/netns/web                            # optional: the tap's network namespace
//
// Relative paths are relative to the config file's directory.
type hostConfig struct {
	APIVersion string        `yaml:"apiVersion"`
	Cache      cacheConfig   `yaml:"cache"`
	Registry   regConfig     `yaml:"registry"`
	Guests     []guestConfig `yaml:"guests"`
}

type cacheConfig struct {
	Dir string `yaml:"dir"`
	Max string `yaml:"max"`
}

type regConfig struct {
	PlainHTTP bool `yaml:"plain-http"`
}

type guestConfig struct {
	Name        string `yaml:"name"`
	Artifact    string `yaml:"artifact"`
	Key         string `yaml:"key"`
	ConsoleLog  string `yaml:"console-log"`
	Restart     string `yaml:"restart"`
	MaxRestarts *int   `yaml:"max-restarts"`
	Serial      *bool  `yaml:"serial"`
	// Disks names where each captured disk's writable copy lives, by
	// disk ID. A (re)start moves the previous copy to PATH.prev: every
	// resume starts from the disk as captured.
	Disks map[string]string `yaml:"disks"`
	// Tap attaches the guest's NIC, in the network namespace Netns (a
	// path such as /run/netns/NAME) if it is set.
	Tap   string `yaml:"tap"`
	Netns string `yaml:"netns"`
}

const apiVersion = "bunkerhost/v1"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// loadConfig reads and checks a host config. Unknown keys, wrong types
// and missing values are errors naming the file and line.
func loadConfig(path string) (*hostConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c hostConfig
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty", path)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Dir(path)
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{path}, args...)...))
	}
	if c.APIVersion != apiVersion {
		bad("apiVersion %q, want %q", c.APIVersion, apiVersion)
	}
	if c.Cache.Max == "" {
		c.Cache.Max = "20G"
	}
	if _, err := units.ParseSize(c.Cache.Max); err != nil {
		bad("cache.max: %v", err)
	}
	c.Cache.Dir = abs(c.Cache.Dir)
	if len(c.Guests) == 0 {
		bad("no guests")
	}
	seen := map[string]bool{}
	for i := range c.Guests {
		g := &c.Guests[i]
		switch {
		case !nameRE.MatchString(g.Name):
			bad("guests[%d].name %q: want 1 to 63 of a-z, 0-9 and -, starting with a letter or digit", i, g.Name)
		case seen[g.Name]:
			bad("guests[%d].name %q: a second guest with this name", i, g.Name)
		}
		seen[g.Name] = true
		if g.Artifact == "" {
			bad("guest %s: no artifact (a directory or HOST/REPOSITORY:TAG)", g.Name)
		} else if _, err := os.Stat(abs(g.Artifact)); err == nil {
			g.Artifact = abs(g.Artifact)
		}
		if g.Key == "" {
			bad("guest %s: no key: an artifact is resumed only against its builder's public key", g.Name)
		}
		g.Key, g.ConsoleLog = abs(g.Key), abs(g.ConsoleLog)
		for id, p := range g.Disks {
			if id == "" || p == "" || strings.Contains(id, "=") {
				bad("guest %s: disks: %q: %q: want a disk ID and a path", g.Name, id, p)
			}
			g.Disks[id] = abs(p)
		}
		if g.Netns != "" && g.Tap == "" {
			bad("guest %s: netns needs a tap", g.Name)
		}
		switch g.Restart {
		case "":
			g.Restart = "on-failure"
		case "on-failure", "never":
		default:
			bad("guest %s: restart %q: want on-failure or never", g.Name, g.Restart)
		}
		if g.MaxRestarts == nil {
			n := 3
			g.MaxRestarts = &n
		} else if *g.MaxRestarts < 0 {
			bad("guest %s: max-restarts %d is negative", g.Name, *g.MaxRestarts)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &c, nil
}
