package main

import (
	"context"
	"io"
	"time"

	"github.com/bunkerbuild/bunkerbuild/pipeline/isolate"
)

// isolatedRunner runs the boot stage in a throwaway sandbox: new mount,
// PID, network, IPC, UTS, cgroup (and user) namespaces, a tmpfs root with
// only the guest's files (read-only), /dev/kvm and the stage directory.
func isolatedRunner(ctx context.Context, argv []string, inputs, devices []string, dir string, progress io.Writer) error {
	// vmm/kvm reads /sys/module to refuse a PVM-backed /dev/kvm.
	inputs = append(append([]string(nil), inputs...), "/sys/module")
	return isolate.Run(ctx, isolate.Spec{
		Args: argv, Inputs: inputs, Devices: devices, Output: dir, Dir: dir,
		Stdout: progress, Stderr: progress,
		Limits: isolate.Limits{
			AddressSpace: 80 << 30, // guest RAM (at most 64 GiB) is mapped in the child
			OpenFiles:    256,
			FileSize:     128 << 30,
			CPUTime:      time.Hour,
		},
	})
}
