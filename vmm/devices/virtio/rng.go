package virtio

import (
	"crypto/rand"
	"fmt"
)

// Entropy is the virtio-rng backend: the driver offers writable buffers
// and the device fills them with entropy from the host's kernel
// (crypto/rand), so that each guest resumed from one artifact gets fresh
// entropy of its own. A request with a device-readable buffer is a broken
// chain.
type Entropy struct {
	// MaxPerRequest bounds the bytes one request gets; 0 is 64 KiB.
	MaxPerRequest int
}

// Type is virtio's entropy-source device ID.
func (Entropy) Type() uint16 { return TypeEntropy }

// Features: virtio-rng defines none.
func (Entropy) Features() uint64 { return 0 }

// QueueSizes: one request queue.
func (Entropy) QueueSizes() []uint16 { return []uint16{256} }

// ReadConfig: virtio-rng has no configuration.
func (Entropy) ReadConfig(uint64, []byte) {}

// WriteConfig: virtio-rng has no configuration.
func (Entropy) WriteConfig(uint64, []byte) {}

// Reset: virtio-rng keeps no state.
func (Entropy) Reset() {}

// Notify fills every available request on the queue.
func (e Entropy) Notify(_ int, queues []*Queue) error {
	q := queues[0]
	max := e.MaxPerRequest
	if max <= 0 {
		max = 64 << 10
	}
	for {
		c, err := q.Pop()
		if err != nil || c == nil {
			return err
		}
		written := 0
		for _, b := range c.Buffers {
			if !b.Write {
				return fmt.Errorf("%w: entropy request %d has a device-readable buffer", ErrBadChain, c.Head)
			}
			k := min(len(b.Data), max-written)
			if _, err := rand.Read(b.Data[:k]); err != nil {
				return err
			}
			written += k
		}
		q.Push(c, uint32(written))
	}
}
