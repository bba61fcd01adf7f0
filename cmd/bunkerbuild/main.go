// Command bunkerbuild boots guests on the project's own KVM VMM, and builds
// and resumes snapshot artifacts of booted guests.
package main

import (
	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/commands"
	"github.com/bunkerbuild/bunkerbuild/pipeline/isolate"
	"github.com/bunkerbuild/bunkerbuild/vmm/devices/legacy"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

func main() {
	// The boot stage re-executes this binary inside its sandbox; Init
	// finishes entering it there and returns at once everywhere else.
	isolate.Init()
	// This binary boots guests: it has the full profile's boot-time devices.
	machine.SetBootDevices(legacy.New)
	app := &cli.App{
		Name:  "bunkerbuild",
		Usage: "boot legacy guests once, run them on a minimal VMM",
		Description: "Exit status: 0 guest powered off, 1 VMM error, 2 bad input, " +
			"3 guest rebooted, 4 stopped by the user or a signal, 5 a resumed guest rebooted and needs a fresh build.",
		Commands: []*cli.Command{
			commands.Run(),
			guestCommand(),
			demoCommand(),
			surfaceCommand(),
			buildCommand(),
			commands.Resume(),
			commands.Verify(),
			commands.Inspect(),
			commands.Push(),
			commands.Pull(),
			commands.Cache(),
			keygenCommand(),
			bootStageCommand(),
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main reports errors itself
	}
	commands.Main(app)
}
