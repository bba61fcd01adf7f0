package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/console"
)

// deviceVMM runs the default guest with one virtio-blk disk and one
// virtio-net NIC on a tap, as a process of its own inside the test's
// network namespace.
type deviceVMM struct {
	name  string
	argv  func(kernel, initrd, disk, tap string) []string
	dumps bool // prints its vCPUs' state to stderr on SIGUSR1
}

func deviceVMMs() []deviceVMM {
	return []deviceVMM{
		{"bunkerbuild", func(kernel, initrd, disk, tap string) []string {
			return []string{bunkerbuildBin, "run", "--kernel", kernel, "--initrd", initrd, "--mem", "512M", "--cpus", "2",
				"--cmdline", guestCmdline, "--disk", disk, "--tap", tap}
		}, true},
		// QEMU's virtio-blk and virtio-net, on the same file and tap: its
		// default cache mode (writeback, the host's page cache, as ours)
		// and thread-pool I/O, and its userspace virtio-net (vhost-net
		// would move the packet path into the kernel: a different design,
		// not the same devices).
		{"qemu -M pc", func(kernel, initrd, disk, tap string) []string {
			return []string{"qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-cpu", "host", "-m", "512", "-smp", "2",
				"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
				"-kernel", kernel, "-initrd", initrd, "-append", guestCmdline,
				"-drive", "file=" + disk + ",if=none,id=d0,format=raw,cache=writeback",
				"-device", "virtio-blk-pci,drive=d0",
				"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no,vhost=off",
				"-device", "virtio-net-pci,netdev=n0"}
		}, false},
	}
}

// deviceSample is one run's figures, as the guest measured them.
type deviceSample map[string]float64 // metric -> MB/s or IOPS

var benchLine = regexp.MustCompile(`(?m)^(seq-read|seq-write|rand-read-4k|rand-write-4k|net-send) ([0-9.]+)(?: ([0-9.]+))?\s*$`)

// deviceRun boots one VMM in the namespace and runs the guest's disk and
// network benchmarks, secs seconds each.
func deviceRun(ctx context.Context, v deviceVMM, ns *testNetns, disk string, secs int) (deviceSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	argv := append([]string{"netns", "exec", ns.name}, v.argv(os.Getenv(envKernel), os.Getenv(envInitrd), disk, ns.tap)...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	c := console.New(in, nil)
	cmd.Stdout = c
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	fail := func(what string, err error) (deviceSample, error) {
		if v.dumps {
			// Our VMM prints its vCPUs' state on SIGUSR1: a stuck
			// guest is then diagnosed from the failed run's report.
			cmd.Process.Signal(syscall.SIGUSR1)
			time.Sleep(2 * time.Second)
		}
		return nil, fmt.Errorf("%s: %s: %w; stderr %q; console %q", v.name, what, err, stderr.String(), tail([]byte(c.Output())))
	}
	if _, err := c.Expect(ctx, shellPrompt); err != nil {
		return fail("no shell", err)
	}
	if _, st, err := c.Run(ctx, "ip addr add "+guestIP+"/24 dev eth0 && ip link set eth0 up && sleep 1"); err != nil || st != 0 {
		return fail("network setup", fmt.Errorf("status %d, %v", st, err))
	}
	s := deviceSample{}
	var cmdlines []string
	only := os.Getenv(envBenchDevices)
	if only == "" || only == "disk" {
		cmdlines = append(cmdlines, fmt.Sprintf("bunkerguest disk-bench /dev/vda %d", secs))
	}
	if only == "" || only == "net" {
		cmdlines = append(cmdlines, fmt.Sprintf("bunkerguest net-send %s %d", peerNet, secs))
	}
	for _, cmdline := range cmdlines {
		note("devices: %s: %s", v.name, cmdline)
		out, st, err := c.Run(ctx, cmdline)
		if err != nil || st != 0 {
			return fail(cmdline, fmt.Errorf("status %d, %v, output %q", st, err, out))
		}
		for _, m := range benchLine.FindAllStringSubmatch(out, -1) {
			mbs, _ := strconv.ParseFloat(m[2], 64)
			s[m[1]+" MB/s"] = mbs
			if m[3] != "" && strings.HasPrefix(m[1], "rand") {
				iops, _ := strconv.ParseFloat(m[3], 64)
				s[m[1]+" IOPS"] = iops
			}
		}
	}
	return s, nil
}

// envBenchDevices, set to disk or net, runs only that half of
// BenchmarkDevices.
const envBenchDevices = "BUNKERBUILD_BENCH_DEVICES"

// BenchmarkDevices runs the default guest on our VMM and on QEMU, each
// with a virtio-blk disk (a 256 MiB raw file) and a virtio-net NIC on a
// tap in a network namespace of the benchmark's own, b.N times each, and
// prints a table of what the guest measured (bunkerguest disk-bench and
// net-send, 5 s per figure): sequential 1 MiB and random 4 KiB disk
// throughput with O_DIRECT at queue depth 1, and guest-to-host TCP
// throughput to a peer on the tap's host side. The target is at least
// 90% of QEMU's figure on each.
func BenchmarkDevices(b *testing.B) {
	buildVMM(b)
	ns := newNetns(b)
	disk := filepath.Join(b.TempDir(), "bench.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(disk, 256<<20); err != nil {
		b.Fatal(err)
	}
	const secs = 5
	samples := map[string][]deviceSample{}
	var failed []string
	vmms := deviceVMMs()
	// The VMMs take turns, so that every round holds one sample of each
	// under the same conditions, even if the lab dies mid-benchmark.
	for round := range b.N {
		for _, v := range vmms {
			note("devices: round %d: %s", round+1, v.name)
			s, err := deviceRun(context.Background(), v, ns, disk, secs)
			if err != nil {
				// Now, not only in the table: the lab's L1 may die before it.
				note("devices: round %d: %s: failed: %v", round+1, v.name, err)
				failed = append(failed, err.Error())
				continue
			}
			samples[v.name] = append(samples[v.name], s)
			// Each sample as it comes: the lab's L1 has died mid-run.
			note("devices: round %d: %s: %v", round+1, v.name, s)
		}
	}
	metrics := []string{"seq-read MB/s", "seq-write MB/s", "rand-read-4k IOPS", "rand-write-4k IOPS", "net-send MB/s"}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nvirtio devices, guest-measured, median of %d run(s) each (2 vCPUs, 512 MiB; disk: 256 MiB raw file, O_DIRECT, queue depth 1; net: TCP to the tap's host side)\n", b.N)
	fmt.Fprintf(&sb, "%-20s %14s %14s %8s\n", "metric", vmms[0].name, vmms[1].name, "ratio")
	for _, m := range metrics {
		ours, peer := medianOf(samples[vmms[0].name], m), medianOf(samples[vmms[1].name], m)
		ratio := "-"
		if peer > 0 && ours >= 0 {
			ratio = fmt.Sprintf("%.2f", ours/peer)
		}
		fmt.Fprintf(&sb, "%-20s %14.1f %14.1f %8s\n", m, ours, peer, ratio)
	}
	for _, f := range failed {
		fmt.Fprintf(&sb, "failed run: %s\n", f)
	}
	fmt.Fprint(os.Stderr, sb.String())
	b.Log(sb.String())
}

func medianOf(ss []deviceSample, metric string) float64 {
	var v []float64
	for _, s := range ss {
		if x, ok := s[metric]; ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return -1
	}
	sort.Float64s(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2 // an even count: the middle two's mean
	}
	return v[len(v)/2]
}
