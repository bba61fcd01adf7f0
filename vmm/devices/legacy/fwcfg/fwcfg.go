// Package fwcfg emulates QEMU's firmware configuration device (fw_cfg) as
// SeaBIOS 1.16 uses it on x86: the way the VMM hands the firmware its
// configuration (CPU count, memory map, boot order, ACPI tables) while a
// machine boots through SeaBIOS. It is a boot-time device: only machines
// of the full profile that boot firmware offer it.
//
// The device is two inventory entries (QEMU docs/specs/fw_cfg.rst):
//
//   - Ports: a 16-bit little-endian selector register at offset 0, write
//     only, and an 8-bit data register at offset 1. Writing the selector
//     picks an item and rewinds its offset; each read of the data register
//     returns the next byte of the item, and 0 past its end or when the
//     selector names no item. Bit 14 of the selector (the old "write
//     channel") is ignored; bit 15 picks the architecture-local items.
//   - DMA: the 8-byte DMA address register, big-endian: offset 0 is the high
//     32 bits, offset 4 the low 32 bits, and writing the low half (or all 8
//     bytes at once) starts a transfer described by the FWCfgDmaAccess
//     structure at that guest-physical address. Reads return "QEMU CFG".
//
// It serves the signature (key 0x0000, "QEMU"), the feature bitmap (0x0001:
// traditional interface and DMA), the file directory (0x0019), the numeric
// items the VMM adds with AddItem, and the files it adds with AddFile, which
// are numbered from 0x0020 in name order. The set of items is fixed when the
// guest first touches the device; adding items afterwards is refused.
//
// DMA transfers run synchronously in the vCPU thread that started them,
// which finds the control word already written back: 0 on success, the
// error bit otherwise. A transfer is checked before anything is copied,
// and refused (error bit, guest memory untouched) if its target range is
// not all guest RAM, if it is longer than MaxItemSize, or if it writes:
// every item is read-only. A read beyond an item's end reads zeros, as the
// data register does and as QEMU does. A read of an item that does not
// exist also fills its range with zeros, so that firmware which ignores
// the error bit (SeaBIOS does) sees what the data register would have
// shown it, but sets the error bit. If the access structure itself is not
// in RAM, nothing is written and the failure is reported.
//
// Failures the guest causes (unknown keys, once per key; writes to items;
// malformed accesses; failed transfers) are reported through the log
// function, at most maxReports times over the device's life.
package fwcfg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/bunkerbuild/bunkerbuild/vmm/bus"
	"github.com/bunkerbuild/bunkerbuild/vmm/memory"
)

// Keys of the numeric items, with the format SeaBIOS 1.16 reads them in on
// x86 (src/fw/paravirt.c). An item SeaBIOS reads that the VMM does not add
// reads as zeros, which SeaBIOS takes as "none" or "default".
const (
	KeySignature uint16 = 0x0000 // "QEMU"; served by the device
	KeyID        uint16 = 0x0001 // le32 feature bitmap; served by the device
	KeyRAMSize   uint16 = 0x0003 // le64 RAM size in bytes; SeaBIOS on x86 reads the CMOS instead
	KeyNoGraphic uint16 = 0x0004 // le16: nonzero makes SeaBIOS use its serial console
	KeyNbCPUs    uint16 = 0x0005 // le16 vCPUs present at boot
	KeyNUMA      uint16 = 0x000d // le64 node count, le64 node of each of MaxCPUs, le64 size of each node
	KeyBootMenu  uint16 = 0x000e // le16: nonzero shows the boot menu ("etc/show-boot-menu")
	KeyMaxCPUs   uint16 = 0x000f // le16 possible vCPUs ("etc/max-cpus")
	KeyFileDir   uint16 = 0x0019 // the file directory; served by the device
	KeyFileFirst uint16 = 0x0020 // the first file's key

	// KeyArchLocal is bit 15: keys with it set name x86-specific items.
	KeyArchLocal     uint16 = 0x8000
	KeyACPITables    uint16 = 0x8000 // le16 count, then le16 length and table, each
	KeySMBIOSEntries uint16 = 0x8001 // le16 count, then entries
	KeyIRQ0Override  uint16 = 0x8002 // u8: nonzero if the timer is wired to GSI 2
	KeyE820Table     uint16 = 0x8003 // le32 count, then reservations as E820Table encodes them; unused if file "etc/e820" exists
)

const (
	keyWriteChannel uint16 = 0x4000 // bit 14: ignored, and never part of an item's key
	keyIndexMask    uint16 = 0x3fff

	featureTraditional = 1 << 0
	featureDMA         = 1 << 1
)

// FileNameSize is the size of a directory entry's name field; a name must
// be shorter, to leave room for its NUL.
const FileNameSize = 56

// MaxItemSize bounds an item's size and a DMA transfer's length.
const MaxItemSize = 16 << 20

// maxFiles is the number of keys from KeyFileFirst to the end of the
// generic range.
const maxFiles = int(keyIndexMask) + 1 - int(KeyFileFirst)

// Register offsets.
const (
	portSelector = 0 // in Ports: 16-bit, write only
	portData     = 1 // in Ports: 8-bit
	dmaHigh      = 0 // in DMA: high 32 bits of the address
	dmaLow       = 4 // in DMA: low 32 bits; writing it starts the transfer
)

// DMA control bits.
const (
	ctlError  = 0x01
	ctlRead   = 0x02
	ctlSkip   = 0x04
	ctlSelect = 0x08
	ctlWrite  = 0x10
)

// dmaAccessSize is the size of FWCfgDmaAccess: be32 control, be32 length,
// be64 address.
const dmaAccessSize = 16

// dmaSignature is what the DMA address register reads as.
var dmaSignature = [8]byte{'Q', 'E', 'M', 'U', ' ', 'C', 'F', 'G'}

// maxReports bounds how often a device calls its log function.
const maxReports = 64

// Memory is guest RAM as the DMA interface reaches it. Both methods fail,
// copying nothing, if any part of the range is not RAM; memory.Guest is
// one.
type Memory interface {
	ReadAt(b []byte, gpa uint64) error
	WriteAt(b []byte, gpa uint64) error
}

type file struct {
	name string
	data []byte
}

// tag names a report that is made once.
type tag struct {
	kind   uint8
	a, b   uint64
	access bool
}

const (
	tagUnknownKey = iota
	tagItemWrite
	tagAccess
)

// Device is the fw_cfg device. It is safe for concurrent use.
type Device struct {
	mu  sync.Mutex
	mem Memory
	log func(error)

	items   map[uint16][]byte // by key without bit 14; files join at start
	files   []file            // sorted by name
	started bool              // the guest touched the device: items are fixed

	sel   uint16 // the selector as last written
	cur   []byte // the selected item
	known bool   // the selector names an item
	off   uint32 // in cur, at most len(cur)
	high  uint32 // high half of the DMA address

	reports  int
	reported map[tag]bool
	pending  []error // reports to log once the lock is released
}

// New returns a device with no items but those it serves itself. It
// transfers DMA to and from mem; a nil mem offers no DMA interface (the
// feature bitmap says so, and the DMA register reads as all ones and
// ignores writes). log, which
// may be nil, receives the failures the guest causes; it is called from
// vCPU threads, without the device's lock held.
func New(mem Memory, log func(error)) *Device {
	d := &Device{mem: mem, log: log, items: map[uint16][]byte{}, reported: map[tag]bool{}}
	id := uint32(featureTraditional)
	if mem != nil {
		id |= featureDMA
	}
	d.items[KeySignature] = []byte("QEMU")
	d.items[KeyID] = binary.LittleEndian.AppendUint32(nil, id)
	return d
}

// Ports returns the device for the selector and data register entry (two
// ports: selector at offset 0, data at offset 1).
func (d *Device) Ports() bus.Device { return ports{d} }

// DMA returns the device for the DMA address register entry (8 ports).
func (d *Device) DMA() bus.Device { return dma{d} }

// AddItem adds the numeric item key, a copy of data. The key must not be
// one the device serves itself, lie in the file range (0x0020-0x3fff), have
// bit 14 set, or be taken; data must be at most MaxItemSize bytes. Items
// are added before the guest first touches the device.
func (d *Device) AddItem(key uint16, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.started:
		return fmt.Errorf("fw_cfg item %#04x: added after the guest started using the device", key)
	case key == KeySignature || key == KeyID || key == KeyFileDir:
		return fmt.Errorf("fw_cfg item %#04x: served by the device", key)
	case key&keyWriteChannel != 0:
		return fmt.Errorf("fw_cfg item %#04x: bit 14 (write channel) is not part of a key", key)
	case key&KeyArchLocal == 0 && key >= KeyFileFirst:
		return fmt.Errorf("fw_cfg item %#04x: in the file range, add it with AddFile", key)
	case len(data) > MaxItemSize:
		return fmt.Errorf("fw_cfg item %#04x: %d bytes, at most %d", key, len(data), MaxItemSize)
	}
	if _, ok := d.items[key]; ok {
		return fmt.Errorf("fw_cfg item %#04x: added twice", key)
	}
	d.items[key] = bytes.Clone(data)
	if d.items[key] == nil {
		d.items[key] = []byte{}
	}
	return nil
}

// AddUint16 adds the numeric item key holding v, little-endian.
func (d *Device) AddUint16(key, v uint16) error {
	return d.AddItem(key, binary.LittleEndian.AppendUint16(nil, v))
}

// AddUint32 adds the numeric item key holding v, little-endian.
func (d *Device) AddUint32(key uint16, v uint32) error {
	return d.AddItem(key, binary.LittleEndian.AppendUint32(nil, v))
}

// AddUint64 adds the numeric item key holding v, little-endian.
func (d *Device) AddUint64(key uint16, v uint64) error {
	return d.AddItem(key, binary.LittleEndian.AppendUint64(nil, v))
}

// SetCPUs adds NB_CPUS and MAX_CPUS: present vCPUs at boot, of max.
func (d *Device) SetCPUs(present, max int) error {
	if present < 1 || present > max || max > 0xffff {
		return fmt.Errorf("fw_cfg CPUs: %d present of %d, want 1 <= present <= max <= 65535", present, max)
	}
	if err := d.AddUint16(KeyNbCPUs, uint16(present)); err != nil {
		return err
	}
	return d.AddUint16(KeyMaxCPUs, uint16(max))
}

// AddFile adds the file name, a copy of data, to the directory. The name
// must be printable ASCII, 1 to FileNameSize-1 bytes, and not taken; data
// must be at most MaxItemSize bytes. Files are added before the guest
// first touches the device; their keys follow the order of their names.
func (d *Device) AddFile(name string, data []byte) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("fw_cfg file: %w", err)
	}
	if len(data) > MaxItemSize {
		return fmt.Errorf("fw_cfg file %q: %d bytes, at most %d", name, len(data), MaxItemSize)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started {
		return fmt.Errorf("fw_cfg file %q: added after the guest started using the device", name)
	}
	i, found := slices.BinarySearchFunc(d.files, name, func(f file, name string) int {
		return cmpString(f.name, name)
	})
	if found {
		return fmt.Errorf("fw_cfg file %q: added twice", name)
	}
	if len(d.files) >= maxFiles {
		return fmt.Errorf("fw_cfg file %q: more than %d files", name, maxFiles)
	}
	data = bytes.Clone(data)
	if data == nil {
		data = []byte{}
	}
	d.files = slices.Insert(d.files, i, file{name: name, data: data})
	return nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkName checks a name for the directory and the loader's commands.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) >= FileNameSize {
		return fmt.Errorf("name %q is %d bytes, at most %d", name, len(name), FileNameSize-1)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("name %q: byte %#02x at %d is not printable ASCII", name, c, i)
		}
	}
	return nil
}

// unlock releases the lock, then logs what was reported under it.
func (d *Device) unlock() {
	errs := d.pending
	d.pending = nil
	d.mu.Unlock()
	if d.log != nil {
		for _, err := range errs {
			d.log(err)
		}
	}
}

// report queues err for the log, within the budget.
func (d *Device) report(err error) {
	if d.reports >= maxReports {
		return
	}
	d.reports++
	d.pending = append(d.pending, err)
	if d.reports == maxReports {
		d.pending = append(d.pending, fmt.Errorf("fw_cfg: %d reports, further ones are dropped", maxReports))
	}
}

// reportOnce reports err unless t was reported before.
func (d *Device) reportOnce(t tag, err func() error) {
	if d.reported[t] || d.reports >= maxReports {
		return
	}
	d.reported[t] = true
	d.report(err())
}

// start fixes the items on the guest's first access: the files join the
// items, with the directory listing them.
func (d *Device) start() {
	if d.started {
		return
	}
	d.started = true
	dir := binary.BigEndian.AppendUint32(make([]byte, 0, 4+64*len(d.files)), uint32(len(d.files)))
	for i, f := range d.files {
		key := KeyFileFirst + uint16(i)
		d.items[key] = f.data
		dir = binary.BigEndian.AppendUint32(dir, uint32(len(f.data)))
		dir = binary.BigEndian.AppendUint16(dir, key)
		dir = binary.BigEndian.AppendUint16(dir, 0)
		var name [FileNameSize]byte
		copy(name[:], f.name)
		dir = append(dir, name[:]...)
	}
	d.items[KeyFileDir] = dir
	d.choose(d.sel)
}

// choose points the data register at the item the selector v names.
func (d *Device) choose(v uint16) {
	d.sel = v
	d.cur, d.known = d.items[v&^keyWriteChannel]
	d.off = 0
}

// selectKey is a guest's selection of v.
func (d *Device) selectKey(v uint16) {
	d.choose(v)
	if !d.known {
		key := v &^ keyWriteChannel
		d.reportOnce(tag{kind: tagUnknownKey, a: uint64(key)}, func() error {
			return fmt.Errorf("fw_cfg: guest selected item %#04x, which does not exist; it reads as zeros", key)
		})
	}
}

// readByte is a read of the data register.
func (d *Device) readByte() byte {
	if int(d.off) >= len(d.cur) {
		return 0
	}
	v := d.cur[d.off]
	d.off++
	return v
}

// refuseWrite reports a guest's write to the selected item.
func (d *Device) refuseWrite(how string) {
	key := d.sel &^ keyWriteChannel
	d.reportOnce(tag{kind: tagItemWrite, a: uint64(key)}, func() error {
		return fmt.Errorf("fw_cfg: guest wrote to item %#04x through the %s; items are read-only", key, how)
	})
}

// badAccess reports an access that is not one of the registers.
func (d *Device) badAccess(reg string, write bool, offset uint64, size int) {
	d.reportOnce(tag{kind: tagAccess, a: offset, b: uint64(size), access: write}, func() error {
		dir := "read"
		if write {
			dir = "write"
		}
		return fmt.Errorf("fw_cfg: guest %s of %d bytes at offset %d of the %s: no such register, ignored", dir, size, offset, reg)
	})
}

type ports struct{ d *Device }

// Read serves the data register; other reads return all ones.
func (p ports) Read(offset uint64, data []byte) {
	d := p.d
	d.mu.Lock()
	defer d.unlock()
	d.start()
	if offset == portData && len(data) == 1 {
		data[0] = d.readByte()
		return
	}
	for i := range data {
		data[i] = 0xff
	}
	d.badAccess("selector and data ports", false, offset, len(data))
}

// Write serves the selector; writes to the data register are refused.
func (p ports) Write(offset uint64, data []byte) {
	d := p.d
	d.mu.Lock()
	defer d.unlock()
	d.start()
	switch {
	case offset == portSelector && len(data) == 2:
		d.selectKey(binary.LittleEndian.Uint16(data))
	case offset == portData && len(data) == 1:
		d.refuseWrite("data register")
	default:
		d.badAccess("selector and data ports", true, offset, len(data))
	}
}

type dma struct{ d *Device }

// Read returns the bytes of "QEMU CFG" the access covers.
func (r dma) Read(offset uint64, data []byte) {
	d := r.d
	d.mu.Lock()
	defer d.unlock()
	d.start()
	for i := range data {
		data[i] = 0xff
		if o := offset + uint64(i); d.mem != nil && o < uint64(len(dmaSignature)) {
			data[i] = dmaSignature[o]
		}
	}
}

// Write sets the high half of the address, or sets the low half (or the
// whole address) and runs the transfer.
func (r dma) Write(offset uint64, data []byte) {
	d := r.d
	d.mu.Lock()
	defer d.unlock()
	d.start()
	if d.mem == nil {
		d.badAccess("DMA address register (no DMA interface)", true, offset, len(data))
		return
	}
	switch {
	case offset == dmaHigh && len(data) == 4:
		d.high = binary.BigEndian.Uint32(data)
	case offset == dmaLow && len(data) == 4:
		addr := uint64(d.high)<<32 | uint64(binary.BigEndian.Uint32(data))
		d.high = 0
		d.transfer(addr)
	case offset == dmaHigh && len(data) == 8:
		d.high = 0
		d.transfer(binary.BigEndian.Uint64(data))
	default:
		d.badAccess("DMA address register", true, offset, len(data))
	}
}

// transfer runs the DMA access described at gpa and writes its control
// word back.
func (d *Device) transfer(gpa uint64) {
	var acc [dmaAccessSize]byte
	if err := d.mem.ReadAt(acc[:], gpa); err != nil {
		d.report(fmt.Errorf("fw_cfg: DMA access structure at %#x: %w; nothing done", gpa, err))
		return
	}
	control := binary.BigEndian.Uint32(acc[0:])
	length := binary.BigEndian.Uint32(acc[4:])
	addr := binary.BigEndian.Uint64(acc[8:])
	status, err := d.run(control, length, addr)
	if err != nil {
		d.report(fmt.Errorf("fw_cfg: DMA access at %#x (control %#x, %d bytes at %#x): %w", gpa, control, length, addr, err))
	}
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], status)
	if err := d.mem.WriteAt(out[:], gpa); err != nil {
		// The structure was just read from there.
		d.report(fmt.Errorf("fw_cfg: DMA access structure at %#x: writing the control word back: %w", gpa, err))
	}
}

// run performs one DMA operation and returns the control word to write
// back, with the reason for an error bit the guest did not cause by
// naming an unknown item.
func (d *Device) run(control, length uint32, addr uint64) (uint32, error) {
	if control&ctlSelect != 0 {
		d.selectKey(uint16(control >> 16))
	}
	switch {
	case control&ctlRead != 0:
		return d.dmaRead(length, addr)
	case control&ctlWrite != 0:
		d.refuseWrite("DMA interface")
		return ctlError, nil
	case control&ctlSkip != 0:
		if !d.known {
			return ctlError, nil
		}
		d.off = uint32(min(uint64(d.off)+uint64(length), uint64(len(d.cur))))
	case control&ctlSelect != 0 && !d.known:
		return ctlError, nil
	}
	return 0, nil
}

// dmaRead copies length bytes of the selected item from the current
// offset to guest memory at addr, zeros past the item's end.
func (d *Device) dmaRead(length uint32, addr uint64) (uint32, error) {
	if length > MaxItemSize {
		return ctlError, fmt.Errorf("longer than %d bytes", MaxItemSize)
	}
	if addr+uint64(length) < addr {
		return ctlError, errors.New("the range wraps around the address space")
	}
	if length == 0 {
		if !d.known {
			return ctlError, nil
		}
		return 0, nil
	}
	// A range whose ends are not RAM fails without the allocation; one
	// that spans a hole fails at WriteAt, which copies nothing.
	var probe [1]byte
	if err := d.mem.ReadAt(probe[:], addr); err != nil {
		return ctlError, err
	}
	if err := d.mem.ReadAt(probe[:], addr+uint64(length)-1); err != nil {
		return ctlError, err
	}
	buf := make([]byte, length)
	n := 0
	if int(d.off) < len(d.cur) {
		n = copy(buf, d.cur[d.off:])
	}
	if err := d.mem.WriteAt(buf, addr); err != nil {
		return ctlError, err
	}
	d.off += uint32(n)
	if !d.known {
		return ctlError, nil
	}
	return 0, nil
}

// State is the device's guest-visible state, for snapshots. The items are
// not part of it: a restored device is built with the same items.
type State struct {
	Selector uint16 `json:"selector"`
	Offset   uint32 `json:"offset"`
	DMAHigh  uint32 `json:"dma_high"`
	Started  bool   `json:"started"`
}

// State returns the device's state.
func (d *Device) State() State {
	d.mu.Lock()
	defer d.unlock()
	return State{Selector: d.sel, Offset: d.off, DMAHigh: d.high, Started: d.started}
}

// SetState loads state saved from a device built with the same items. An
// offset past the selected item's end is clamped to it.
func (d *Device) SetState(s State) {
	d.mu.Lock()
	defer d.unlock()
	if s.Started {
		d.start()
	}
	d.choose(s.Selector)
	d.off = uint32(min(uint64(s.Offset), uint64(len(d.cur))))
	d.high = s.DMAHigh
}

// E820Table encodes entries as SeaBIOS reads the file "etc/e820" (its
// memory map, which it prefers to the CMOS) and the reservations of
// KeyE820Table: 20 bytes each, le64 address, le64 size, le32 type.
func E820Table(entries []memory.E820Entry) []byte {
	b := make([]byte, 0, 20*len(entries))
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint64(b, e.Addr)
		b = binary.LittleEndian.AppendUint64(b, e.Size)
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Type))
	}
	return b
}
