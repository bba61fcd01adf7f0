package virtio

import (
	"crypto/rand"
	"fmt"
)

// RNG is virtio-rng's request processing: the driver offers writable
// buffers and the device fills them with entropy from the host's kernel
// (crypto/rand), so that a resumed guest has fresh entropy of its own. A
// chain with a device-readable buffer is a broken chain.
type RNG struct {
	Queue  *Queue
	Status *Status
	// MaxPerRequest bounds the bytes one request gets; 0 is 64 KiB.
	MaxPerRequest int
}

// Process fills every available request and returns how many it
// completed. An error puts the device in the needs-reset state.
func (r *RNG) Process() (int, error) {
	if !r.Status.Live() {
		return 0, nil
	}
	max := r.MaxPerRequest
	if max <= 0 {
		max = 64 << 10
	}
	n := 0
	for {
		c, err := r.Queue.Pop()
		if err != nil {
			return n, r.Status.NeedsReset(err)
		}
		if c == nil {
			return n, nil
		}
		written := 0
		for _, b := range c.Buffers {
			if !b.Write {
				return n, r.Status.NeedsReset(fmt.Errorf("%w: entropy request %d has a device-readable buffer", ErrBadChain, c.Head))
			}
			k := min(len(b.Data), max-written)
			if _, err := rand.Read(b.Data[:k]); err != nil {
				return n, err
			}
			written += k
		}
		r.Queue.Push(c, uint32(written))
		n++
	}
}
