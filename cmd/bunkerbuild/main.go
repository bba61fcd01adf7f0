// Command bunkerbuild boots guests on the project's own KVM VMM, and builds
// and resumes snapshot artifacts of booted guests.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/pipeline/isolate"
)

// Exit statuses of bunkerbuild. A guest's poweroff is success.
const (
	exitPoweroff = 0
	exitError    = 1
	exitUsage    = 2
	exitReboot   = 3
	exitStopped  = 4
	// exitNeedsBoot: a resumed guest rebooted; it can only boot again
	// through the pipeline, on the full profile.
	exitNeedsBoot = 5
)

func main() {
	// The boot stage re-executes this binary inside its sandbox; Init
	// finishes entering it there and returns at once everywhere else.
	isolate.Init()
	app := &cli.App{
		Name:  "bunkerbuild",
		Usage: "boot legacy guests once, run them on a minimal VMM",
		Description: "Exit status: 0 guest powered off, 1 VMM error, 2 bad input, " +
			"3 guest rebooted, 4 stopped by the user or a signal, 5 a resumed guest rebooted and needs a fresh build.",
		Commands: []*cli.Command{
			runCommand(),
			guestCommand(),
			demoCommand(),
			surfaceCommand(),
			buildCommand(),
			resumeCommand(),
			verifyCommand(),
			inspectCommand(),
			pushCommand(),
			pullCommand(),
			cacheCommand(),
			keygenCommand(),
			bootStageCommand(),
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main reports errors itself
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "bunkerbuild: %v\n", err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(exitError)
	}
}

// usageError marks bad input: it exits with status 2.
func usageError(format string, args ...any) error {
	return cli.Exit(fmt.Sprintf(format, args...), exitUsage)
}
