package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/pipeline/resume"
	"github.com/bunkerbuild/bunkerbuild/snapshots"
	vnet "github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/net"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// artifactErr gives errors about a bad artifact the bad-input exit status.
func artifactErr(err error) error {
	for _, e := range []error{snapshots.ErrMalformed, snapshots.ErrTruncated, snapshots.ErrVersion, snapshots.ErrLimit,
		snapshots.ErrSignature, snapshots.ErrUnsigned, snapshots.ErrDigest, machine.ErrInvalid} {
		if errors.Is(err, e) {
			return cli.Exit("refusing the artifact: "+err.Error(), ExitUsage)
		}
	}
	return err
}

// KeyFlag is the --key flag: the builder's public key.
func KeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "key", Required: true, Usage: "the builder's public key (PEM)"}
}

// openArtifact opens and verifies the artifact the command names.
func openArtifact(c *cli.Context, what string) (*snapshots.Artifact, error) {
	if c.NArg() != 1 {
		return nil, UsageError("%s takes one artifact directory", what)
	}
	return openArtifactAt(c, c.Args().First())
}

// Verify returns the verify command.
func Verify() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check an artifact's signature and the digest of every blob; exit 0 if it would resume",
		ArgsUsage: "ARTIFACT",
		Flags:     []cli.Flag{KeyFlag()},
		Action: func(c *cli.Context) error {
			start := time.Now()
			a, err := openArtifact(c, "verify")
			if err != nil {
				return err
			}
			defer a.Close()
			fmt.Printf("%s: OK, signed by %s, %d MiB checked in %v\n", a, a.KeyID(), a.Size()>>20, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
}

// Inspect returns the inspect command.
func Inspect() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "verify an artifact and describe it: machine, inputs, memory and blobs",
		ArgsUsage: "ARTIFACT",
		Flags:     []cli.Flag{KeyFlag(), &cli.BoolFlag{Name: "json", Usage: "print the verified config as JSON"}},
		Action: func(c *cli.Context) error {
			a, err := openArtifact(c, "inspect")
			if err != nil {
				return err
			}
			defer a.Close()
			cfg := a.Config()
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Digest string           `json:"digest"`
					Config snapshots.Config `json:"config"`
				}{a.Digest().String(), cfg})
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "artifact\t%s\n", a.Path())
			fmt.Fprintf(w, "manifest\t%s\n", a.Digest())
			fmt.Fprintf(w, "signed by\t%s\n", a.KeyID())
			fmt.Fprintf(w, "created\t%s by bunkerbuild %s\n", cfg.Created.Format(time.RFC3339), cfg.BuilderVersion)
			fmt.Fprintf(w, "profiles\tbooted on %s, resumes on %s\n", cfg.BootProfile, cfg.ResumeProfile)
			fmt.Fprintf(w, "inventory\t%s\n", cfg.InventoryDigest)
			fmt.Fprintf(w, "machine\t%d vCPUs, %d MiB, %d CPUID leaves\n", cfg.VCPUs, cfg.Memory.Size()>>20, len(cfg.CPUID))
			for _, s := range []struct {
				name string
				src  *snapshots.Source
			}{{"recipe", cfg.Recipe}, {"kernel", cfg.Kernel}, {"initrd", cfg.Initrd}} {
				if s.src != nil {
					fmt.Fprintf(w, "%s\t%s %s %s\n", s.name, s.src.Name, s.src.Digest, s.src.Release)
				}
			}
			stored := cfg.Memory.StoredPages() * snapshots.PageSize
			fmt.Fprintf(w, "memory\t%d MiB non-zero in %d chunks of %d MiB; %d MiB of blobs (%.2f x non-zero)\n",
				stored>>20, len(cfg.Memory.Chunks), snapshots.ChunkSize>>20, a.Size()>>20, float64(a.Size())/float64(max(stored, 1)))
			for k, v := range cfg.Labels {
				fmt.Fprintf(w, "label\t%s=%s\n", k, v)
			}
			return w.Flush()
		},
	}
}

// Resume returns the resume command.
func Resume() *cli.Command {
	return &cli.Command{
		Name:      "resume",
		Usage:     "verify a signed artifact (a directory, or a registry reference pulled through the cache) and resume its guest on the minimal VMM, console on this terminal (Ctrl-A x quits)",
		ArgsUsage: "ARTIFACT|HOST/REPOSITORY(:TAG|@DIGEST)",
		Flags: append(append([]cli.Flag{
			KeyFlag(),
			&cli.StringFlag{Name: "policy", Value: "deny", Usage: "accesses outside the profile: deny or kill"},
			&cli.BoolFlag{Name: "serial", Value: true, Usage: "keep COM1 as the console (an addition to the minimal profile)"},
			&cli.BoolFlag{Name: "report", Usage: "print the guest's use of each inventory entry, and the denied addresses, at exit"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log denied accesses"},
			&cli.StringFlag{Name: "run", Usage: "instead of connecting the console to this terminal, run this shell command in the guest, print its output and power the guest off"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Minute, Usage: "with --run: give up after this long"},
			&cli.BoolFlag{Name: "copy-memory", Usage: "copy guest memory out of the artifact instead of mapping it copy-on-write (no sharing between guests; the artifact may change once the guest runs)"},
			&cli.StringSliceFlag{Name: "disk", Usage: "ID=PATH: make the writable copy of the captured disk ID at PATH, which must not exist, and keep it (repeatable); disks not named are copied to a temporary directory and removed at exit"},
			&cli.StringFlag{Name: "tap", Usage: "attach the guest's NIC to this tap device; without it the NIC stays disconnected"},
			&cli.StringFlag{Name: "netns", Usage: "with --tap: the network namespace the tap is in (a path such as /run/netns/NAME); the VMM itself stays in its own"},
		}, registryFlags()...), cacheDirFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return UsageError("resume takes one artifact directory")
			}
			pub, err := snapshots.LoadPublicKey(c.String("key"))
			if err != nil {
				return UsageError("--key: %v", err)
			}
			cfg, err := vmConfigFlags(c)
			if err != nil {
				return err
			}
			cfg.SerialConsole = c.Bool("serial")
			opts := resume.Options{CopyMemory: c.Bool("copy-memory")}
			if opts.Disks, err = diskPaths(c.StringSlice("disk")); err != nil {
				return err
			}
			dir, err := fetchForResume(c, c.Args().First(), pub)
			if err != nil {
				return err
			}
			if name := c.String("tap"); name != "" {
				tap, err := openTap(c.String("netns"), name)
				if err != nil {
					return UsageError("--tap: %v", err)
				}
				defer tap.Close()
				opts.NIC = tap
			} else if c.IsSet("netns") {
				return UsageError("--netns needs --tap")
			}
			create := func(cfg machine.Config) (*machine.Machine, error) {
				r, err := resume.ArtifactWith(dir, pub, cfg, opts)
				if err != nil {
					return nil, artifactErr(err)
				}
				name := "?"
				if r.Config.Recipe != nil {
					name = r.Config.Recipe.Name
				}
				how := "verified"
				if !r.Hashed {
					how = "verified (signature; digests by this host's stamp)"
				}
				fmt.Fprintf(os.Stderr, "bunkerbuild: resuming %q (%s, built %s by bunkerbuild %s) on the minimal profile: %s in %v, restored in %v\n",
					name, r.Digest, r.Config.Created.Format(time.RFC3339), r.Config.BuilderVersion,
					how, r.Verify.Round(time.Millisecond), r.Restore.Round(time.Millisecond))
				return r.Machine, nil
			}
			if c.IsSet("run") {
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				ctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
				defer cancel()
				step := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "resume: "+format+"\n", args...) }
				return Scripted(ctx, cfg, create, c.String("run"), c.Bool("report"), step, false)
			}
			// The minimal VMM has no firmware and no legacy devices: a guest
			// that reboots cannot boot again here.
			needsBoot := cli.Exit("the guest rebooted: a resumed guest cannot boot again on the minimal VMM; boot it through the pipeline again with bunkerbuild build", ExitNeedsBoot)
			return runConsole(c.Context, cfg, create, c.Bool("report"), needsBoot)
		},
	}
}

// diskPaths parses --disk ID=PATH flags.
func diskPaths(flags []string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range flags {
		id, path, ok := strings.Cut(f, "=")
		if !ok || id == "" || path == "" {
			return nil, UsageError("--disk %q: want ID=PATH", f)
		}
		if _, dup := out[id]; dup {
			return nil, UsageError("--disk: disk %q named twice", id)
		}
		out[id] = path
	}
	return out, nil
}

// openTap opens a tap, in the network namespace at ns if it is not "".
func openTap(ns, name string) (*vnet.Tap, error) {
	if ns == "" {
		return vnet.OpenTap(name)
	}
	return vnet.OpenTapIn(ns, name)
}
