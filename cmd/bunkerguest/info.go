package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	cpuOnlinePath = "/sys/devices/system/cpu/online"
	meminfoPath   = "/proc/meminfo"
)

// printInfo writes facts about the running guest to w, one key=value per
// line, in a fixed order.
func printInfo(w io.Writer) error {
	online, err := os.ReadFile(cpuOnlinePath)
	if err != nil {
		return err
	}
	cpuList := strings.TrimSpace(string(online))
	cpus, err := countCPUs(cpuList)
	if err != nil {
		return fmt.Errorf("%s: %w", cpuOnlinePath, err)
	}
	mem, err := readMemTotal(meminfoPath)
	if err != nil {
		return err
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "cpus=%d\n", cpus)
	fmt.Fprintf(&b, "cpus_online=%s\n", cpuList)
	fmt.Fprintf(&b, "mem_total_kib=%d\n", mem)
	fmt.Fprintf(&b, "unix_time=%d\n", time.Now().Unix())
	fmt.Fprintf(&b, "kernel_release=%s\n", unix.ByteSliceToString(uts.Release[:]))
	_, err = io.WriteString(w, b.String())
	return err
}

// countCPUs returns the number of CPUs in a kernel CPU list such as
// "0-3,6,8-9" (the format of /sys/devices/system/cpu/online).
func countCPUs(list string) (int, error) {
	if list == "" {
		return 0, errors.New("empty CPU list")
	}
	n := 0
	for _, r := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		first, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("CPU list %q: %w", list, err)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("CPU list %q: %w", list, err)
			}
		}
		if first < 0 || last < first {
			return 0, fmt.Errorf("CPU list %q: bad range %q", list, r)
		}
		n += last - first + 1
	}
	return n, nil
}

func readMemTotal(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	kib, err := parseMemTotal(f)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return kib, nil
}

// parseMemTotal returns the MemTotal field of /proc/meminfo in KiB (which
// the kernel labels "kB").
func parseMemTotal(r io.Reader) (uint64, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		key, rest, ok := strings.Cut(s.Text(), ":")
		if !ok || key != "MemTotal" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("malformed MemTotal line %q", s.Text())
		}
		kib, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("MemTotal: %w", err)
		}
		return kib, nil
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no MemTotal line")
}
