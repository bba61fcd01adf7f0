package lab

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/bunkerbuild/bunkerbuild/internal/lab/labproto"
)

// kernelCmdline is L1's kernel command line. panic=-1 with QEMU's -no-reboot
// turns a kernel panic (for one, init dying) into QEMU exiting.
const kernelCmdline = "console=ttyS0 quiet panic=-1 rdinit=/init"

// ports lists the virtio serial ports, each backed by a Unix socket of the
// same name in the run directory, to which QEMU connects as a client.
var ports = []string{labproto.PortStdout, labproto.PortStderr, labproto.PortStatus}

// qemuParams is one L1 boot.
type qemuParams struct {
	kernel, initrd string
	memMiB, cpus   int
	runDir         string // holds the port sockets
}

// socketPath returns the Unix socket for the port name in runDir.
func socketPath(runDir, port string) string {
	return filepath.Join(runDir, strings.TrimPrefix(port, "bunkerlab."))
}

// qemuArgs returns the arguments of qemu-system-x86_64 for p. The serial
// console is QEMU's stdout; there is no monitor and no display. L1 runs under
// TCG with -cpu max, which emulates AMD SVM, so L1's KVM works without KVM on
// the host. The host's root is exported read-write over 9p.
func qemuArgs(p qemuParams) []string {
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "q35", "-accel", "tcg", "-cpu", "max",
		"-smp", fmt.Sprint(p.cpus), "-m", fmt.Sprintf("%dM", p.memMiB),
		"-kernel", p.kernel, "-initrd", p.initrd, "-append", kernelCmdline,
		"-serial", "stdio",
		"-device", "virtio-rng-pci",
		"-device", "virtio-serial-pci,id=ports",
	}
	for i, port := range ports {
		id := fmt.Sprintf("port%d", i)
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=%s,path=%s", id, optValue(socketPath(p.runDir, port))),
			"-device", fmt.Sprintf("virtserialport,bus=ports.0,chardev=%s,name=%s", id, port))
	}
	return append(args,
		"-fsdev", "local,id=root,path=/,security_model=none,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=root,mount_tag="+labproto.MountTag)
}

// optValue escapes s for a QEMU option list, where "," separates options.
func optValue(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}
