package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A peer boots the default guest as a separate process.
type peer struct {
	name string
	argv func(kernel, initrd string, memMiB, cpus int) []string
}

// bunkerbuildBin is the VMM binary under test, built by buildVMM.
var bunkerbuildBin string

func peers() []peer {
	qemu := func(machine string, extra ...string) func(string, string, int, int) []string {
		return func(kernel, initrd string, memMiB, cpus int) []string {
			args := []string{"qemu-system-x86_64", "-M", machine, "-accel", "kvm", "-cpu", "host",
				"-m", strconv.Itoa(memMiB), "-smp", strconv.Itoa(cpus), "-nodefaults", "-no-user-config",
				"-display", "none", "-serial", "stdio", "-no-reboot",
				"-kernel", kernel, "-initrd", initrd, "-append", guestCmdline}
			return append(args, extra...)
		}
	}
	return []peer{
		{"bunkerbuild", func(kernel, initrd string, memMiB, cpus int) []string {
			return []string{bunkerbuildBin, "run", "--kernel", kernel, "--initrd", initrd,
				"--mem", fmt.Sprintf("%dM", memMiB), "--cpus", strconv.Itoa(cpus), "--cmdline", guestCmdline}
		}},
		{"qemu -M microvm", qemu("microvm")},
		{"qemu -M pc", qemu("pc")},
	}
}

// bootSample is one boot: time from process start until the guest's init
// printed its first line, and the VMM's own resident memory then.
type bootSample struct {
	boot   time.Duration
	rssKiB uint64
}

// bootOnce starts the peer and measures one boot.
func bootOnce(ctx context.Context, p peer, kernel, initrd string, memMiB, cpus int) (bootSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	argv := p.argv(kernel, initrd, memMiB, cpus)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return bootSample{}, err
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return bootSample{}, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return bootSample{}, fmt.Errorf("%s: %w", p.name, err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// The default guest's init prints "cpus=N" from userspace first.
	found := make(chan error, 1)
	go func() {
		r := bufio.NewReader(out)
		var seen bytes.Buffer
		for {
			line, err := r.ReadBytes('\n')
			seen.Write(line)
			if bytes.Contains(line, []byte("cpus=")) {
				found <- nil
				io.Copy(io.Discard, r)
				return
			}
			if err != nil {
				found <- fmt.Errorf("%s: console closed before userspace (%v); last output %q; stderr %q", p.name, err, tail(seen.Bytes()), stderr.String())
				return
			}
		}
	}()
	select {
	case err := <-found:
		if err != nil {
			return bootSample{}, err
		}
	case <-ctx.Done():
		return bootSample{}, fmt.Errorf("%s: no userspace within the timeout", p.name)
	}
	s := bootSample{boot: time.Since(start)}
	if s.rssKiB, err = rssExcludingGuest(cmd.Process.Pid, uint64(memMiB)<<20); err != nil {
		return bootSample{}, err
	}
	return s, nil
}

func tail(b []byte) []byte {
	if len(b) > 400 {
		return b[len(b)-400:]
	}
	return b
}

// rssExcludingGuest sums the resident memory of pid's mappings except
// those as large as guest RAM or larger, which hold guest memory. The same
// rule applies to every VMM measured.
func rssExcludingGuest(pid int, guestBytes uint64) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total uint64
	var mapSize uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			lo, hi, _ := strings.Cut(fields[0], "-")
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil {
				return 0, fmt.Errorf("smaps: bad range %q", fields[0])
			}
			mapSize = b - a
			continue
		}
		if fields[0] == "Rss:" && mapSize < guestBytes {
			kib, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("smaps: bad Rss %q", sc.Text())
			}
			total += kib
		}
	}
	return total, sc.Err()
}

func buildVMM(b *testing.B) {
	b.Helper()
	if bunkerbuildBin != "" {
		return
	}
	if p := os.Getenv("BUNKERBUILD_BIN"); p != "" {
		bunkerbuildBin = p
		return
	}
	b.Fatalf("BUNKERBUILD_BIN is not set: TestMain builds the VMM binary before the benchmark runs")
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkBoot boots the default guest (2 vCPUs, 512 MiB) on our VMM and
// on QEMU, b.N times each, and prints a table of boot-to-userspace time and
// VMM resident memory excluding guest RAM.
func BenchmarkBoot(b *testing.B) {
	buildVMM(b)
	kernel, initrd := os.Getenv(envKernel), os.Getenv(envInitrd)
	const memMiB, cpus = 512, 2
	type result struct {
		boots  []time.Duration
		rss    []uint64
		failed []error
	}
	results := map[string]*result{}
	var order []string
	for _, p := range peers() {
		r := &result{}
		results[p.name] = r
		order = append(order, p.name)
		b.Run(strings.ReplaceAll(p.name, " ", "_"), func(b *testing.B) {
			for range b.N {
				s, err := bootOnce(context.Background(), p, kernel, initrd, memMiB, cpus)
				if err != nil {
					// A peer's failed boot is part of the comparison, not the
					// end of it: count it and show it in the table.
					b.Log(err)
					r.failed = append(r.failed, err)
					continue
				}
				r.boots = append(r.boots, s.boot)
				r.rss = append(r.rss, s.rssKiB)
			}
			if len(r.boots) == 0 {
				b.Fatalf("%s: no boot succeeded", p.name)
			}
			b.ReportMetric(float64(median(r.boots).Milliseconds()), "boot-ms")
			b.ReportMetric(float64(r.rss[len(r.rss)-1])/1024, "vmm-rss-MiB")
		})
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\n%-18s %6s %7s %14s %14s %16s\n", "VMM", "boots", "failed", "median boot", "min boot", "VMM RSS (MiB)")
	for _, name := range order {
		r := results[name]
		if len(r.boots) == 0 {
			fmt.Fprintf(&tbl, "%-18s %6d %7d\n", name, 0, len(r.failed))
			continue
		}
		minBoot := r.boots[0]
		for _, d := range r.boots {
			minBoot = min(minBoot, d)
		}
		fmt.Fprintf(&tbl, "%-18s %6d %7d %14v %14v %16.1f\n", name, len(r.boots), len(r.failed),
			median(r.boots).Round(time.Millisecond), minBoot.Round(time.Millisecond), float64(r.rss[len(r.rss)-1])/1024)
	}
	fmt.Fprintf(&tbl, "guest: %s + %s, %d MiB, %d vCPUs; RSS excludes mappings of %d MiB or more (guest RAM)\n",
		filepath.Base(kernel), filepath.Base(initrd), memMiB, cpus, memMiB)
	fmt.Print(tbl.String())
}
