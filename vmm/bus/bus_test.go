package bus

import (
	"bytes"
	"errors"
	"log"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
)

type recorder struct {
	reads, writes []uint64
}

func (r *recorder) Read(off uint64, data []byte) {
	r.reads = append(r.reads, off)
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}
func (r *recorder) Write(off uint64, data []byte) { r.writes = append(r.writes, off) }

func entry(id string, base, size uint64) inventory.Entry {
	return inventory.Entry{ID: inventory.ID(id), Space: inventory.SpacePIO, Base: base, Size: size, Class: inventory.Required, Profiles: inventory.Full}
}

func TestRegister(t *testing.T) {
	b := New(inventory.SpacePIO, Deny, nil)
	if err := b.Register(entry("a", 0x10, 8), &recorder{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		e    inventory.Entry
		dev  Device
	}{
		{"overlap below", entry("b", 0x0c, 8), &recorder{}},
		{"overlap above", entry("c", 0x17, 2), &recorder{}},
		{"inside", entry("d", 0x12, 1), &recorder{}},
		{"empty", entry("e", 0x40, 0), &recorder{}},
		{"wrong space", inventory.Entry{ID: "f", Space: inventory.SpaceMMIO, Base: 0x1000, Size: 1}, &recorder{}},
		{"in-kernel entry with a device", inventory.Entry{ID: "g", Space: inventory.SpacePIO, Base: 0x50, Size: 1, InKernel: true}, &recorder{}},
		{"userspace entry without a device", entry("h", 0x60, 1), nil},
	} {
		if err := b.Register(tc.e, tc.dev); err == nil {
			t.Errorf("%s: Register succeeded", tc.name)
		}
	}
	if err := b.Register(entry("adjacent", 0x18, 4), &recorder{}); err != nil {
		t.Errorf("adjacent entry refused: %v", err)
	}
}

func TestDispatchAndDeny(t *testing.T) {
	var logBuf bytes.Buffer
	b := New(inventory.SpacePIO, Deny, log.New(&logBuf, "", 0))
	dev := &recorder{}
	if err := b.Register(entry("dev", 0x3f8, 8), dev); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2)
	if err := b.Read(0x3fa, data); err != nil || !bytes.Equal(data, []byte{2, 3}) {
		t.Errorf("read at offset 2 = %v, %v", data, err)
	}
	if err := b.Write(0x3ff, []byte{1}); err != nil || len(dev.writes) != 1 || dev.writes[0] != 7 {
		t.Errorf("write at offset 7: %v, device saw %v", err, dev.writes)
	}
	// Past the end, and straddling it: denied, all ones, counted.
	for _, tc := range []struct {
		addr uint64
		size int
	}{{0x400, 1}, {0x3fe, 4}} {
		data := make([]byte, tc.size)
		if err := b.Read(tc.addr, data); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, bytes.Repeat([]byte{0xff}, tc.size)) {
			t.Errorf("denied read at %#x = %x, want all ones", tc.addr, data)
		}
	}
	if got := b.DeniedTotal(); got != 2 {
		t.Errorf("DeniedTotal = %d, want 2", got)
	}
	st := b.Stats()
	if len(st) != 1 || st[0].Reads != 1 || st[0].Writes != 1 || st[0].Last.IsZero() {
		t.Errorf("Stats = %+v", st)
	}
	if !strings.Contains(logBuf.String(), "denied") {
		t.Errorf("no log line for a denied access: %q", logBuf.String())
	}
}

func TestKillPolicy(t *testing.T) {
	b := New(inventory.SpaceMSR, Kill, nil)
	err := b.Write(0x179, make([]byte, 8))
	var de *DeniedError
	if !errors.As(err, &de) || de.Addr != 0x179 || !de.Write || !strings.Contains(err.Error(), "MSR 0x179") {
		t.Fatalf("kill policy: %v", err)
	}
	if owned, err := b.Account(0x10, false); owned || err == nil {
		t.Errorf("Account of an unlisted MSR under kill: %v, %v", owned, err)
	}
}

func TestAccount(t *testing.T) {
	b := New(inventory.SpaceMSR, Deny, nil)
	e := inventory.Entry{ID: "m", Space: inventory.SpaceMSR, Base: 0xc0000080, Size: 5, InKernel: true}
	if err := b.Register(e, nil); err != nil {
		t.Fatal(err)
	}
	if owned, err := b.Account(0xc0000082, true); !owned || err != nil {
		t.Errorf("listed MSR: %v, %v", owned, err)
	}
	if owned, err := b.Account(0xc0000085, false); owned || err != nil {
		t.Errorf("unlisted MSR: %v, %v", owned, err)
	}
	// A device-less entry is never served as a port or MMIO access.
	if err := b.Read(0xc0000080, make([]byte, 8)); err != nil || b.DeniedTotal() != 2 {
		t.Errorf("read of an accounting-only entry: %v, denied %d", err, b.DeniedTotal())
	}
}

// A storm of denied accesses keeps the bookkeeping bounded and the log quiet.
func TestDenyStormBounded(t *testing.T) {
	var logBuf bytes.Buffer
	b := New(inventory.SpacePIO, Deny, log.New(&logBuf, "", 0))
	for addr := uint64(0); addr < 3*maxDenied; addr++ {
		b.Write(addr, []byte{0})
	}
	if n := len(b.Denied()); n != maxDenied {
		t.Errorf("%d denied addresses tracked, want at most %d", n, maxDenied)
	}
	if got := b.DeniedTotal(); got != 3*maxDenied {
		t.Errorf("DeniedTotal = %d, want %d (overflow counted)", got, 3*maxDenied)
	}
	if lines := strings.Count(logBuf.String(), "\n"); lines > 20 {
		t.Errorf("%d log lines for a storm within a second, want the rate limit's burst", lines)
	}
}

func TestRateLimiter(t *testing.T) {
	r := rateLimiter{interval: time.Second, burst: 2}
	now := time.Unix(100, 0)
	got := []bool{r.allow(now), r.allow(now), r.allow(now), r.allow(now.Add(time.Second))}
	want := []bool{true, true, false, true}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("allow sequence = %v, want %v", got, want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"deny": Deny, "kill": Kill} {
		if got, err := ParsePolicy(in); err != nil || got != want || got.String() != in {
			t.Errorf("ParsePolicy(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParsePolicy("allow"); err == nil {
		t.Error("ParsePolicy(allow) succeeded")
	}
}
