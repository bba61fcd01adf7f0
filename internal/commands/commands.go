// Package commands holds the command-line commands and helpers that both
// binaries share: cmd/bunkerbuild, which builds and boots guests, and
// cmd/bunkerhost, the production host, which only resumes them and so
// contains none of the boot-time devices.
package commands

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
)

// Exit statuses. A guest's poweroff is success.
const (
	ExitPoweroff = 0
	ExitError    = 1
	ExitUsage    = 2 // bad input: arguments, a recipe, an artifact
	ExitReboot   = 3
	ExitStopped  = 4 // Ctrl-A x or a signal
	// ExitNeedsBoot: a resumed guest rebooted; it can only boot again
	// through the pipeline, on the full profile.
	ExitNeedsBoot = 5
)

// UsageError marks bad input: it exits with status 2.
func UsageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), ExitUsage)
}

// CacheFlag is the --cache flag of the default guest's files.
func CacheFlag() cli.Flag {
	return &cli.StringFlag{Name: "cache", Value: guestimage.DefaultCacheDir(), Usage: "where the default guest's kernel and initramfs are cached"}
}

// Main runs app with the process's arguments and exits with the status
// its error carries (ExitError if none), printing the error.
func Main(app *cli.App) {
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", app.Name, err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(ExitError)
	}
}
