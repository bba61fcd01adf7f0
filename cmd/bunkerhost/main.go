// Command bunkerhost is the production host: it pulls, verifies and resumes
// signed guest artifacts on the minimal VMM, and supervises them. It
// contains none of the boot-time devices (vmm/devices/legacy) and cannot
// boot a guest: guests boot once, through bunkerbuild build.
//
//	bunkerhost run HOST.yaml     supervise the guests a host config names
//	bunkerhost resume ...        resume one artifact (as bunkerbuild resume)
//	bunkerhost verify|inspect|pull|cache ...
package main

import (
	"github.com/urfave/cli/v2"

	"github.com/bunkerbuild/bunkerbuild/internal/commands"
)

func main() {
	app := &cli.App{
		Name:  "bunkerhost",
		Usage: "resume and supervise signed guest artifacts on the minimal VMM",
		Description: "Exit status of resume: 0 guest powered off, 1 VMM error, 2 bad input (a refused artifact), " +
			"4 stopped by a signal, 5 the guest rebooted and needs a fresh build through bunkerbuild.",
		Commands: []*cli.Command{
			runCommand(),
			commands.Resume(),
			commands.Verify(),
			commands.Inspect(),
			commands.Pull(),
			commands.Cache(),
		},
	}
	commands.Main(app)
}
