package main

import (
	"context"
	"errors"
	"io"
)

// isolatedRunner runs the boot stage in a sandbox. The sandbox
// (pipeline/isolate) is not wired in yet: refuse rather than run without it.
func isolatedRunner(ctx context.Context, argv []string, inputs, devices []string, dir string, progress io.Writer) error {
	return errors.New("the isolated boot stage is not available in this build; pass --no-isolate to run it as a plain child process")
}
