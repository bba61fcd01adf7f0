package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	stdnet "net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"

	"github.com/bunkerbuild/bunkerbuild/internal/diskimage"
	"github.com/bunkerbuild/bunkerbuild/internal/kvmtest"
	"github.com/bunkerbuild/bunkerbuild/internal/session"
	"github.com/bunkerbuild/bunkerbuild/pipeline/resume"
	vnet "github.com/bunkerbuild/bunkerbuild/vmm/devices/virtio/net"
	"github.com/bunkerbuild/bunkerbuild/vmm/inventory"
	"github.com/bunkerbuild/bunkerbuild/vmm/machine"
)

// The peer: the test binary, started again inside the test's network
// namespace with envPeer set, serves HTTP there (see servePeer).
const (
	envPeer      = "BUNKERBUILD_TEST_PEER"       // address to listen on
	envPeerToken = "BUNKERBUILD_TEST_PEER_TOKEN" // what GET / answers
)

// The test network: the tap's host side and the guest, in a /24 of
// their own inside the namespace.
const (
	peerIP  = "10.77.0.1"
	guestIP = "10.77.0.2"
	peerWeb = peerIP + ":8080"
	peerNet = peerIP + ":8081" // counts what it receives, for the benchmark
)

// devicesCmdline is the guest's command line: the serial console first
// and hvc0 last, so that /dev/console is hvc0 and output carries on when
// the serial port vanishes at the handoff; the data disk mounted before
// the capture, with a disk writer and the counter on it.
const devicesCmdline = "console=ttyS0 console=hvc0 reboot=k panic=-1 i8042.noaux quiet" +
	" bunkerguest.mount=/dev/vda1:/mnt:vfat bunkerguest.io=/mnt/io bunkerguest.count=/tmp/count"

// devicesRecipe writes a recipe with a new FAT32 data disk and a NIC into
// dir, with a key pair, and returns the recipe and artifact paths.
func devicesRecipe(t testing.TB, dir string) (recipeFile, artifact string) {
	t.Helper()
	guest := fmt.Sprintf("  kernel: %s\n  initrd: %s\n  cmdline: %s", os.Getenv(envKernel), os.Getenv(envInitrd), devicesCmdline)
	return writeRecipe(t, dir, "devices", guest, "  disks:\n    - id: data\n      size: 64M\n  nic: true")
}

// testNetns is a network namespace the test made, with a tap whose host
// side has peerIP, and the peer serving in it.
type testNetns struct {
	name, path, tap string
	token           string
	peer            *exec.Cmd
	peerOut         *bytes.Buffer
}

// newNetns makes the namespace, the tap and the peer; cleanup removes
// them. Nothing gets an address outside the namespace.
func newNetns(t testing.TB) *testNetns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command (apt-get install iproute2)")
	}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	n := &testNetns{name: fmt.Sprintf("bbtest-%d-%x", os.Getpid(), suffix), tap: "bbtap0"}
	n.path = "/run/netns/" + n.name
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	ip("-n", n.name, "link", "set", "lo", "up")
	ip("-n", n.name, "tuntap", "add", "dev", n.tap, "mode", "tap")
	ip("-n", n.name, "addr", "add", peerIP+"/24", "dev", n.tap)
	ip("-n", n.name, "link", "set", n.tap, "up")
	if _, err := stdnet.InterfaceByName(n.tap); err == nil {
		t.Fatalf("the tap %s is visible outside the test's namespace", n.tap)
	}
	tok := make([]byte, 8)
	rand.Read(tok)
	n.token = hex.EncodeToString(tok)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n.peer = exec.Command("ip", "netns", "exec", n.name, self)
	n.peer.Env = append(os.Environ(), envPeer+"="+peerIP, envPeerToken+"="+n.token)
	n.peerOut = &bytes.Buffer{}
	n.peer.Stdout, n.peer.Stderr = n.peerOut, n.peerOut
	if err := n.peer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.peer.Process.Kill()
		n.peer.Wait()
	})
	return n
}

// servePeer is the peer, run by TestMain when envPeer is set: an HTTP
// server on port 8080 answering the token, and a sink on 8081 that reads
// each connection to its end and prints "received N bytes in D".
func servePeer(ip string) int {
	token := os.Getenv(envPeerToken)
	web, err := stdnet.Listen("tcp", ip+":8080")
	if err != nil {
		fmt.Println("peer:", err)
		return 1
	}
	sink, err := stdnet.Listen("tcp", ip+":8081")
	if err != nil {
		fmt.Println("peer:", err)
		return 1
	}
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				start := time.Now()
				n, _ := io.Copy(io.Discard, c)
				fmt.Printf("received %d bytes in %v\n", n, time.Since(start))
			}()
		}
	}()
	http.Serve(web, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "peer %s says hello\n", token)
	}))
	return 1
}

// TestDevicesAcrossHandoff builds a recipe with a data disk and a NIC;
// the guest mounts the disk at boot and keeps writing to it while it is
// captured. It resumes the artifact on the minimal profile without a
// serial port, its NIC on a tap in a namespace the test made, and
// checks: the console is hvc0; the disk writes in flight at the capture
// completed and the mounted filesystem is read and written; the guest
// reaches the peer; and after the guest powers off, the disk's
// filesystem is clean and holds what the guest wrote.
func TestDevicesAcrossHandoff(t *testing.T) {
	kvmtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	recipeFile, artifact := devicesRecipe(t, dir)
	_, progress, status, err := bunkerbuild(ctx, "build", recipeFile)
	t.Logf("bunkerbuild build:\n%s", progress)
	if err != nil || status != 0 {
		t.Fatalf("bunkerbuild build: status %d, %v", status, err)
	}
	ns := newNetns(t)
	tap, err := vnet.OpenTapIn(ns.path, ns.tap)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()

	disk := filepath.Join(dir, "data.img")
	s := resumeArtifact(t, ctx, artifact, resume.Options{Disks: map[string]string{"data": disk}, NIC: tap},
		func() string { return "peer:\n" + ns.peerOut.String() })

	// The console: this session talks to hvc0, the only console left.
	if got := run(t, ctx, s, "cat /proc/consoles"); !regexp.MustCompile(`(?m)^hvc0\s.*\(EC`).MatchString(got) {
		t.Errorf("/proc/consoles:\n%s\nwant hvc0 as the enabled console", got)
	}
	// The disk: the writer kept going through the capture, every record
	// it made durable is intact, and it still writes.
	first := ioLast(t, ctx, s)
	time.Sleep(500 * time.Millisecond)
	if second := ioLast(t, ctx, s); second <= first {
		t.Errorf("the disk writer stopped: last record %d, then %d", first, second)
	}
	run(t, ctx, s, "echo written after resume > /mnt/after.txt && sync")
	if got := run(t, ctx, s, "cat /mnt/after.txt"); got != "written after resume" {
		t.Errorf("read back %q from the disk", got)
	}
	if got := run(t, ctx, s, "cat /sys/block/vda/serial"); got != "data" {
		t.Errorf("disk serial %q, want data", got)
	}
	// The network: the link came up at the attach; the guest configures
	// its address and fetches the peer's token.
	run(t, ctx, s, "ip addr add "+guestIP+"/24 dev eth0 && ip link set eth0 up")
	got := run(t, ctx, s, "wget -O /tmp/peer http://"+peerWeb+"/ && cat /tmp/peer")
	if want := "peer " + ns.token + " says hello"; !strings.Contains(got, want) {
		t.Errorf("the guest fetched %q from the peer, want %q", got, want)
	}
	// The entropy source serves the resumed guest.
	if got := run(t, ctx, s, "cat /sys/devices/virtual/misc/hw_random/rng_current"); !strings.HasPrefix(got, "virtio_rng") {
		t.Errorf("hw_random uses %q", got)
	}
	checkNoLegacy(t, s.Machine)
	checkOnlySerialDenied(t, s.Machine)
	run(t, ctx, s, "kill $(pidof bunkerguest); sleep 0.3; umount /mnt")
	powerOff(t, ctx, s)

	// The disk on the host: fsck finds it clean, and it holds the file.
	part := filepath.Join(dir, "part.img")
	if err := diskimage.ExtractPartition(part, disk, 1); err != nil {
		t.Fatal(err)
	}
	if fsck, err := exec.LookPath("fsck.fat"); err != nil {
		t.Error("no fsck.fat (apt-get install dosfstools): the disk was not checked")
	} else if out, err := exec.Command(fsck, "-n", part).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n on the resumed disk: %v\n%s", err, out)
	}
	d, err := diskfs.Open(disk, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fs, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenFile("/AFTER.TXT", os.O_RDONLY)
	if err != nil {
		f, err = fs.OpenFile("/after.txt", os.O_RDONLY)
	}
	if err != nil {
		t.Fatalf("after.txt on the disk: %v", err)
	}
	if b, _ := io.ReadAll(f); strings.TrimSpace(string(b)) != "written after resume" {
		t.Errorf("after.txt on the host holds %q", b)
	}
}

// ioLast runs the disk writer's checker and returns its last record.
func ioLast(t *testing.T, ctx context.Context, s *session.Session) uint64 {
	t.Helper()
	out := run(t, ctx, s, "bunkerguest io-check /mnt/io")
	m := regexp.MustCompile(`records=(\d+) last=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("io-check printed %q", out)
	}
	n, _ := strconv.ParseUint(m[2], 10, 64)
	return n
}

// checkOnlySerialDenied checks that the resumed guest reached only for
// the serial port it still has as a console (ttyS0), which the minimal
// profile without --serial does not offer: those writes are denied and
// counted, and nothing else is.
func checkOnlySerialDenied(t *testing.T, m *machine.Machine) {
	t.Helper()
	com1 := inventory.MustGet(inventory.COM1)
	for _, b := range m.Buses() {
		for _, d := range b.Denied() {
			if b.Space() == inventory.SpacePIO && com1.Contains(d.Addr) {
				continue
			}
			t.Errorf("the resumed guest reached %v %#x (%d reads, %d writes), outside the minimal profile", b.Space(), d.Addr, d.Reads, d.Writes)
		}
	}
}
