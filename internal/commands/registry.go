package commands

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
	"github.com/bunkerbuild/bunkerbuild/internal/term"
	"github.com/bunkerbuild/bunkerbuild/internal/units"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	"github.com/bunkerbuild/bunkerbuild/snapshots/registry"
)

func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "plain-http", Usage: "talk HTTP, not HTTPS, to the registry (a registry on a trusted network only)"},
		&cli.StringFlag{Name: "username", Usage: "registry user name; without it, the docker credentials are used ($DOCKER_CONFIG or ~/.docker/config.json)"},
		&cli.BoolFlag{Name: "password-stdin", Usage: "read the registry password from standard input"},
		&cli.BoolFlag{Name: "json", Usage: "print one JSON object per event and a summary, for machines"},
	}
}

func cacheDirFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cache", Value: filepath.Join(guestimage.DefaultCacheDir(), "artifacts"), Usage: "the local artifact cache"},
		&cli.StringFlag{Name: "cache-max", Value: "20G", Usage: "after a pull, remove the least recently used artifacts beyond this size (0: no limit)"},
	}
}

func registryOptions(c *cli.Context, rep *reporter) (registry.Options, error) {
	o := registry.Options{PlainHTTP: c.Bool("plain-http"), Username: c.String("username"), Progress: rep.event}
	if c.Bool("password-stdin") {
		if o.Username == "" {
			return o, UsageError("--password-stdin needs --username")
		}
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && err != io.EOF {
			return o, err
		}
		o.Password = strings.TrimRight(line, "\r\n")
	}
	return o, nil
}

// reporter shows transfers: a progress line that rewrites itself on a
// terminal, a line per blob otherwise, JSON lines with --json.
type reporter struct {
	verb     string
	json     bool
	tty      bool
	mu       sync.Mutex
	blobs    int
	bytes    int64
	start    time.Time
	lastDraw time.Time
}

func newReporter(c *cli.Context, verb string) *reporter {
	// A progress line that redraws itself when a person is watching (stdout
	// is a terminal, and so is stderr, where it is drawn); a line per blob
	// for logs.
	tty := term.IsTerminal(int(os.Stdout.Fd())) && term.IsTerminal(int(os.Stderr.Fd()))
	return &reporter{verb: verb, json: c.Bool("json"), tty: tty, start: time.Now()}
}

func (r *reporter) event(e registry.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := e.Descriptor
	switch {
	case r.json:
		json.NewEncoder(os.Stdout).Encode(map[string]any{"event": e.Kind, "digest": d.Digest, "mediaType": d.MediaType, "size": d.Size})
		return
	case e.Kind == registry.Started:
		return
	}
	if e.Kind == registry.Done {
		r.blobs++
		r.bytes += d.Size
	}
	if r.tty {
		if time.Since(r.lastDraw) > 100*time.Millisecond || e.Kind == registry.Done {
			fmt.Fprintf(os.Stderr, "\r%s: %d blobs, %s in %v ", r.verb, r.blobs, units.Format(uint64(r.bytes)), time.Since(r.start).Round(100*time.Millisecond))
			r.lastDraw = time.Now()
		}
		return
	}
	what := map[registry.EventKind]string{registry.Done: r.verb, registry.Skipped: "present"}[e.Kind]
	fmt.Fprintf(os.Stderr, "%-8s %s %-52s %s\n", what, shortDigest(d.Digest.String()), d.MediaType, units.Format(uint64(d.Size)))
}

// summary ends the progress output with a line (or a JSON object).
func (r *reporter) summary(fields map[string]any, format string, args ...any) {
	if r.tty && !r.json {
		fmt.Fprintln(os.Stderr)
	}
	if r.json {
		fields["event"] = "summary"
		json.NewEncoder(os.Stdout).Encode(fields)
		return
	}
	fmt.Printf(format+"\n", args...)
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// Push returns the push command.
func Push() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "verify an artifact and push it, its signature as a referrer, to an OCI registry; unchanged blobs are not uploaded again",
		ArgsUsage: "ARTIFACT HOST[:PORT]/REPOSITORY:TAG",
		Flags:     append([]cli.Flag{KeyFlag()}, registryFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return UsageError("push takes an artifact directory and a reference")
			}
			// Only what verifies is pushed.
			a, err := openArtifactAt(c, c.Args().Get(0))
			if err != nil {
				return err
			}
			a.Close()
			rep := newReporter(c, "pushed")
			o, err := registryOptions(c, rep)
			if err != nil {
				return err
			}
			desc, st, err := registry.Push(c.Context, c.Args().Get(0), c.Args().Get(1), o)
			if err != nil {
				return err
			}
			rep.summary(map[string]any{"digest": desc.Digest, "blobs": st.Blobs, "uploaded_blobs": st.BlobsMoved, "bytes": st.Bytes, "uploaded_bytes": st.BytesMoved},
				"pushed %s as %s: %d of %d blobs uploaded, %s of %s", c.Args().Get(0), desc.Digest, st.BlobsMoved, st.Blobs,
				units.Format(uint64(st.BytesMoved)), units.Format(uint64(st.Bytes)))
			return nil
		},
	}
}

// openArtifactAt opens and verifies the artifact at path with --key.
func openArtifactAt(c *cli.Context, path string) (*snapshots.Artifact, error) {
	pub, err := snapshots.LoadPublicKey(c.String("key"))
	if err != nil {
		return nil, UsageError("--key: %v", err)
	}
	a, err := snapshots.Open(path, pub)
	if err != nil {
		return nil, artifactErr(err)
	}
	if err := a.Verify(); err != nil {
		a.Close()
		return nil, artifactErr(err)
	}
	return a, nil
}

// Pull returns the pull command.
func Pull() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "pull an artifact from an OCI registry into a new directory; it appears only once it has verified against --key",
		ArgsUsage: "HOST[:PORT]/REPOSITORY(:TAG|@DIGEST) DIR",
		Flags:     append([]cli.Flag{KeyFlag()}, registryFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return UsageError("pull takes a reference and a directory to create")
			}
			pub, err := snapshots.LoadPublicKey(c.String("key"))
			if err != nil {
				return UsageError("--key: %v", err)
			}
			rep := newReporter(c, "pulled")
			o, err := registryOptions(c, rep)
			if err != nil {
				return err
			}
			desc, st, err := registry.Pull(c.Context, c.Args().Get(0), c.Args().Get(1), pub, o)
			if err != nil {
				return artifactErr(err)
			}
			rep.summary(map[string]any{"digest": desc.Digest, "dir": c.Args().Get(1), "blobs": st.BlobsMoved, "bytes": st.BytesMoved},
				"pulled %s (%s) into %s: %d blobs, %s; verified", c.Args().Get(0), desc.Digest, c.Args().Get(1), st.BlobsMoved, units.Format(uint64(st.BytesMoved)))
			return nil
		},
	}
}

// fetchForResume resolves resume's argument: an artifact directory as it
// is, a registry reference through the cache.
func fetchForResume(c *cli.Context, arg string, pub []byte) (string, error) {
	if st, err := os.Stat(arg); err == nil && st.IsDir() {
		return arg, nil
	}
	// A registry reference starts with a host: a name with a dot or a
	// port, or localhost (as docker reads references). Anything else is
	// taken for a directory that is not there.
	host, _, ok := strings.Cut(arg, "/")
	if !ok || !(strings.ContainsAny(host, ".:") || host == "localhost") || strings.HasPrefix(arg, ".") {
		return "", UsageError("%s: no such artifact directory (a registry reference starts with a host, as in registry.example.com/guests/web:v1)", arg)
	}
	max, err := units.ParseSize(c.String("cache-max"))
	if err != nil {
		return "", UsageError("--cache-max: %v", err)
	}
	rep := newReporter(c, "pulled")
	o, err := registryOptions(c, rep)
	if err != nil {
		return "", err
	}
	cache := &registry.Cache{Dir: c.String("cache"), Max: int64(max)}
	f, err := cache.Fetch(c.Context, arg, pub, o)
	if err != nil {
		return "", artifactErr(err)
	}
	switch {
	case f.Offline:
		fmt.Fprintf(os.Stderr, "bunkerbuild: warning: the registry cannot be reached (%v); using %s, the digest %s last resolved to, from the cache\n", f.NetErr, f.Digest, arg)
	case f.Cached:
		fmt.Fprintf(os.Stderr, "bunkerbuild: %s is %s, in the cache\n", arg, f.Digest)
	default:
		rep.summary(map[string]any{"digest": f.Digest, "blobs": f.Stats.BlobsMoved, "bytes": f.Stats.BytesMoved},
			"pulled %s (%s): %d blobs, %s; verified", arg, f.Digest, f.Stats.BlobsMoved, units.Format(uint64(f.Stats.BytesMoved)))
	}
	for _, d := range f.Pruned {
		fmt.Fprintf(os.Stderr, "bunkerbuild: removed %s from the cache (over --cache-max)\n", d)
	}
	return f.Dir, nil
}

// Cache returns the cache command and its ls and prune subcommands.
func Cache() *cli.Command {
	return &cli.Command{
		Name:  "cache",
		Usage: "list or prune the local artifact cache that resume REF fills",
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list cached artifacts, most recently used first",
				Flags: cacheDirFlags(),
				Action: func(c *cli.Context) error {
					list, err := (&registry.Cache{Dir: c.String("cache")}).List()
					if err != nil {
						return err
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "DIGEST\tSIZE\tUSED\tTAGS")
					for _, e := range list {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Digest, units.Format(uint64(e.Size)), e.Used.Format(time.RFC3339), strings.Join(e.Refs, " "))
					}
					return w.Flush()
				},
			},
			{
				Name:  "prune",
				Usage: "remove what interrupted pulls left, then the least recently used artifacts beyond --cache-max",
				Flags: cacheDirFlags(),
				Action: func(c *cli.Context) error {
					max, err := units.ParseSize(c.String("cache-max"))
					if err != nil {
						return UsageError("--cache-max: %v", err)
					}
					removed, freed, err := (&registry.Cache{Dir: c.String("cache")}).Prune(int64(max))
					if err != nil {
						return err
					}
					for _, d := range removed {
						fmt.Println("removed", d)
					}
					fmt.Printf("freed %s\n", units.Format(uint64(freed)))
					return nil
				},
			},
		},
	}
}
