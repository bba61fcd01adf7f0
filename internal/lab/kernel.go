package lab

import (
	"context"
	"fmt"

	"github.com/bunkerbuild/bunkerbuild/internal/guestimage"
)

// kernel is L1's kernel and its module tree.
type kernel struct {
	vmlinuz    string // bzImage
	modulesDir string // unpacked /lib/modules/<version>
	version    string
}

// kernelTree returns the Debian kernel from the cache, fetching it first if
// needed.
func kernelTree(ctx context.Context, cfg Config) (kernel, error) {
	t, err := guestimage.FetchKernel(ctx, cfg.CacheDir, cfg.progressWriter())
	if err != nil {
		return kernel{}, fmt.Errorf("get L1 kernel: %w", err)
	}
	return kernel{vmlinuz: t.Vmlinuz, modulesDir: t.ModulesDir, version: t.Version}, nil
}
