package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mountSpec mounts DEV on DIR as TYPE, from "DEV:DIR:TYPE" (the value of
// guestproto.MountParam), making DIR first.
func mountSpec(spec string) error {
	parts := strings.Split(spec, ":")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return fmt.Errorf("mount %q: want DEV:DIR:TYPE", spec)
	}
	dev, dir, typ := parts[0], parts[1], parts[2]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The device node may appear a moment after its driver loaded.
	var err error
	for i := 0; i < 50; i++ {
		if err = unix.Mount(dev, dir, typ, 0, ""); !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENXIO) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", dev, dir, typ, err)
	}
	return nil
}

// The disk writer: records of ioRecord bytes in a ring of ioSlots, each
// written with pwrite and made durable with fdatasync before the next, so
// that requests are in flight whenever the machine is captured. Record n
// sits in slot n % ioSlots and holds n and a pattern derived from n.
const (
	ioRecord = 512
	ioSlots  = 2048
)

func ioPattern(n uint64) []byte {
	b := make([]byte, ioRecord)
	binary.LittleEndian.PutUint64(b, n)
	copy(b[8:], "BUNKERIO")
	x := n*0x9e3779b97f4a7c15 + 1
	for i := 16; i < ioRecord; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// ioWriter writes records 1, 2, 3... into file, each durable before the
// next, every 20 ms.
func ioWriter(file string) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for n := uint64(1); ; n++ {
		if _, err := f.WriteAt(ioPattern(n), int64(n%ioSlots)*ioRecord); err != nil {
			return err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ioCheck reads file and checks every record the writer wrote: it prints
// "records=N last=M" and fails if any record is not what its number
// says, or the written records are not the last ones up to M.
func ioCheck(file string, stdout io.Writer) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var last uint64
	seen := 0
	for slot := 0; slot*ioRecord+ioRecord <= len(b); slot++ {
		r := b[slot*ioRecord : (slot+1)*ioRecord]
		n := binary.LittleEndian.Uint64(r)
		if n == 0 {
			continue // never written
		}
		if n%ioSlots != uint64(slot) || !bytes.Equal(r, ioPattern(n)) {
			return fmt.Errorf("%s: slot %d holds a corrupt record (number %d)", file, slot, n)
		}
		seen++
		last = max(last, n)
	}
	if seen == 0 {
		return fmt.Errorf("%s: no records", file)
	}
	// Every slot written must hold one of the last ioSlots records.
	for slot := 0; slot*ioRecord+ioRecord <= len(b); slot++ {
		n := binary.LittleEndian.Uint64(b[slot*ioRecord:])
		if n != 0 && last >= ioSlots && n <= last-ioSlots {
			return fmt.Errorf("%s: slot %d holds record %d, older than the ring after %d", file, slot, n, last)
		}
	}
	_, err = fmt.Fprintf(stdout, "records=%d last=%d\n", seen, last)
	return err
}

// diskBench measures dev with O_DIRECT for secs seconds per test:
// sequential 1 MiB reads and writes, and random 4 KiB reads and writes
// (one at a time, queue depth 1). It prints one line per test: "NAME
// MB/s IOPS". The writes destroy dev's contents.
func diskBench(dev string, secs int, stdout io.Writer) error {
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // page-aligned for O_DIRECT
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, t := range []struct {
		name  string
		block int64
		rand  bool
		write bool
	}{{"seq-read", 1 << 20, false, false}, {"seq-write", 1 << 20, false, true}, {"rand-read-4k", 4096, true, false}, {"rand-write-4k", 4096, true, true}} {
		blocks := size / t.block
		if blocks == 0 {
			return fmt.Errorf("%s: %d bytes is too small", dev, size)
		}
		deadline := time.Now().Add(time.Duration(secs) * time.Second)
		start := time.Now()
		var ops, bytes int64
		for i := int64(0); time.Now().Before(deadline); i++ {
			blk := i % blocks
			if t.rand {
				blk = rand.Int64N(blocks)
			}
			var n int
			if t.write {
				n, err = f.WriteAt(buf[:t.block], blk*t.block)
			} else {
				n, err = f.ReadAt(buf[:t.block], blk*t.block)
			}
			if err != nil {
				return fmt.Errorf("%s %s: %w", dev, t.name, err)
			}
			ops++
			bytes += int64(n)
		}
		d := time.Since(start).Seconds()
		fmt.Fprintf(stdout, "%s %.1f %.0f\n", t.name, float64(bytes)/d/1e6, float64(ops)/d)
	}
	return nil
}

// netSend connects to addr (host:port) and sends zeros for secs seconds
// in 64 KiB writes; it prints "net-send MB/s".
func netSend(addr string, secs int, stdout io.Writer) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	// A stalled connection fails instead of hanging the benchmark.
	c.SetWriteDeadline(deadline.Add(10 * time.Second))
	start := time.Now()
	var sent int64
	for time.Now().Before(deadline) {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return err
		}
	}
	d := time.Since(start).Seconds()
	_, err = fmt.Fprintf(stdout, "net-send %.1f\n", float64(sent)/d/1e6)
	return err
}

// seconds parses a duration argument in whole seconds.
func seconds(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 3600 {
		return 0, fmt.Errorf("seconds %q: want 1 to 3600", s)
	}
	return n, nil
}
