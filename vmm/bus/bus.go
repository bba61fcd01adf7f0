// Package bus routes guest port and MMIO accesses from a vCPU exit to the
// device that owns the address, as listed in the inventory. An access no
// registered device owns is handled by the bus's Policy: it is never served
// by accident.
package bus

import (
	"fmt"
	"log"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

// Device serves accesses within one inventory entry. Offsets are relative to
// the entry's base; len(data) is the access width (1, 2, 4 or 8 bytes).
// Devices are called from several vCPU threads and do their own locking.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Policy says what happens to an access outside the registered entries.
type Policy uint8

const (
	// Deny reads all ones, drops writes, and counts the access.
	Deny Policy = iota
	// Kill stops the VM with an error naming the access.
	Kill
)

// ParsePolicy returns the policy named s.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "deny":
		return Deny, nil
	case "kill":
		return Kill, nil
	}
	return 0, fmt.Errorf("unknown access policy %q (want deny or kill)", s)
}

func (p Policy) String() string {
	if p == Kill {
		return "kill"
	}
	return "deny"
}

// DeniedError reports an access that no device owns, under the Kill policy.
type DeniedError struct {
	Space inventory.Space
	Addr  uint64
	Size  int
	Write bool
}

func (e *DeniedError) Error() string {
	dir := "read"
	if e.Write {
		dir = "write"
	}
	if e.Space == inventory.SpaceMSR {
		return fmt.Sprintf("guest %s of MSR %#x: not in the profile's inventory", dir, e.Addr)
	}
	return fmt.Sprintf("guest %s of %d bytes at %s %#x: not in the profile's inventory", dir, e.Size, e.Space, e.Addr)
}

// Counter is the access accounting of one entry.
type Counter struct {
	Reads, Writes atomic.Uint64
	last          atomic.Int64 // unix nanoseconds of the last access
}

// Last returns the time of the last access, or the zero time.
func (c *Counter) Last() time.Time {
	n := c.last.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func (c *Counter) record(write bool, now time.Time) {
	if write {
		c.Writes.Add(1)
	} else {
		c.Reads.Add(1)
	}
	c.last.Store(now.UnixNano())
}

type mapping struct {
	entry   inventory.Entry
	dev     Device
	counter *Counter
}

// Bus is the dispatcher for one address space (port I/O or MMIO).
type Bus struct {
	space    inventory.Space
	policy   Policy
	mappings []mapping // sorted by base, non-overlapping
	logger   *log.Logger

	deniedMu sync.Mutex
	denied   map[uint64]*Counter // by address; bounded by maxDenied
	overflow Counter             // denied accesses beyond maxDenied distinct addresses
	limiter  rateLimiter
}

const maxDenied = 4096

// New returns an empty bus for space that applies policy to unowned
// accesses and logs them, rate-limited, to logger (nil for no log).
func New(space inventory.Space, policy Policy, logger *log.Logger) *Bus {
	return &Bus{space: space, policy: policy, logger: logger, denied: map[uint64]*Counter{},
		limiter: rateLimiter{interval: time.Second, burst: 10}}
}

// Space returns the address space the bus serves.
func (b *Bus) Space() inventory.Space { return b.space }

// Register attaches dev to the inventory entry e. Entries that KVM serves
// (InKernel) are registered with a nil dev, for Account.
func (b *Bus) Register(e inventory.Entry, dev Device) error {
	if e.Space != b.space {
		return fmt.Errorf("register %s: entry is in space %s, bus is %s", e.ID, e.Space, b.space)
	}
	if e.InKernel != (dev == nil) {
		return fmt.Errorf("register %s: an entry KVM serves is registered without a device, any other with one", e.ID)
	}
	if e.Size == 0 {
		return fmt.Errorf("register %s: empty range", e.ID)
	}
	i := sort.Search(len(b.mappings), func(i int) bool { return b.mappings[i].entry.Base >= e.Base })
	if i > 0 && b.mappings[i-1].entry.End() > e.Base {
		return fmt.Errorf("register %s: overlaps %s", e.ID, b.mappings[i-1].entry.ID)
	}
	if i < len(b.mappings) && e.End() > b.mappings[i].entry.Base {
		return fmt.Errorf("register %s: overlaps %s", e.ID, b.mappings[i].entry.ID)
	}
	b.mappings = append(b.mappings, mapping{})
	copy(b.mappings[i+1:], b.mappings[i:])
	b.mappings[i] = mapping{entry: e, dev: dev, counter: new(Counter)}
	return nil
}

func (b *Bus) find(addr uint64) *mapping {
	i := sort.Search(len(b.mappings), func(i int) bool { return b.mappings[i].entry.End() > addr })
	if i < len(b.mappings) && b.mappings[i].entry.Contains(addr) {
		return &b.mappings[i]
	}
	return nil
}

// Account records a guest access at addr whose data path is elsewhere
// (an MSR that KVM serves, for instance). It reports whether a registered
// entry owns addr; an unowned access goes through the bus's policy.
func (b *Bus) Account(addr uint64, write bool) (bool, error) {
	if m := b.find(addr); m != nil {
		m.counter.record(write, time.Now())
		return true, nil
	}
	return false, b.deny(addr, 1, write)
}

// Read serves a guest read of len(data) bytes at addr.
func (b *Bus) Read(addr uint64, data []byte) error {
	if m := b.find(addr); m != nil && m.dev != nil && addr-m.entry.Base+uint64(len(data)) <= m.entry.Size {
		m.counter.record(false, time.Now())
		m.dev.Read(addr-m.entry.Base, data)
		return nil
	}
	for i := range data {
		data[i] = 0xff
	}
	return b.deny(addr, len(data), false)
}

// Write serves a guest write of data at addr.
func (b *Bus) Write(addr uint64, data []byte) error {
	if m := b.find(addr); m != nil && m.dev != nil && addr-m.entry.Base+uint64(len(data)) <= m.entry.Size {
		m.counter.record(true, time.Now())
		m.dev.Write(addr-m.entry.Base, data)
		return nil
	}
	return b.deny(addr, len(data), true)
}

func (b *Bus) deny(addr uint64, size int, write bool) error {
	now := time.Now()
	b.deniedMu.Lock()
	c, ok := b.denied[addr]
	if !ok {
		if len(b.denied) < maxDenied {
			c = new(Counter)
			b.denied[addr] = c
		} else {
			c = &b.overflow
		}
	}
	logIt := b.limiter.allow(now)
	b.deniedMu.Unlock()
	c.record(write, now)
	err := &DeniedError{Space: b.space, Addr: addr, Size: size, Write: write}
	if b.policy == Kill {
		return err
	}
	if logIt && b.logger != nil {
		b.logger.Printf("denied: %v", err)
	}
	return nil
}

// Stat is the accounting of one entry or one denied address.
type Stat struct {
	Entry  inventory.Entry // zero for a denied address
	Addr   uint64          // the denied address
	Reads  uint64
	Writes uint64
	Last   time.Time
}

// Stats returns the accounting of every registered entry, in address order.
func (b *Bus) Stats() []Stat {
	out := make([]Stat, 0, len(b.mappings))
	for _, m := range b.mappings {
		out = append(out, stat(m.counter, m.entry, 0))
	}
	return out
}

// Denied returns the accounting of denied addresses, in address order.
func (b *Bus) Denied() []Stat {
	b.deniedMu.Lock()
	defer b.deniedMu.Unlock()
	out := make([]Stat, 0, len(b.denied))
	for addr, c := range b.denied {
		out = append(out, stat(c, inventory.Entry{}, addr))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// DeniedTotal returns how many accesses the bus denied, over all addresses.
func (b *Bus) DeniedTotal() uint64 {
	b.deniedMu.Lock()
	defer b.deniedMu.Unlock()
	n := b.overflow.Reads.Load() + b.overflow.Writes.Load()
	for _, c := range b.denied {
		n += c.Reads.Load() + c.Writes.Load()
	}
	return n
}

func stat(c *Counter, e inventory.Entry, addr uint64) Stat {
	return Stat{Entry: e, Addr: addr, Reads: c.Reads.Load(), Writes: c.Writes.Load(), Last: c.Last()}
}

// rateLimiter is a token bucket; callers hold the bus's lock.
type rateLimiter struct {
	interval time.Duration
	burst    int
	tokens   int
	last     time.Time
}

func (r *rateLimiter) allow(now time.Time) bool {
	if r.last.IsZero() || now.Sub(r.last) >= r.interval {
		r.tokens = r.burst
		r.last = now
	}
	if r.tokens == 0 {
		return false
	}
	r.tokens--
	return true
}
