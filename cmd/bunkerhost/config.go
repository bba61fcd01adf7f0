package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"

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
