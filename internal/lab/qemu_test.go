package lab

import (
	"slices"
	"strings"
	"testing"
)

func TestQEMUArgs(t *testing.T) {
	args := qemuArgs(qemuParams{
		kernel: "/cache/vmlinuz", initrd: "/run/x/initrd",
		memMiB: 6144, cpus: 3, runDir: "/tmp/run,1",
	})
	// Each flag with the value it must have.
	want := [][2]string{
		{"-machine", "q35"},
		{"-accel", "tcg"},
		{"-cpu", "max"},
		{"-smp", "3"},
		{"-m", "6144M"},
		{"-kernel", "/cache/vmlinuz"},
		{"-initrd", "/run/x/initrd"},
		{"-append", kernelCmdline},
		{"-serial", "stdio"},
		{"-display", "none"},
		{"-fsdev", "local,id=root,path=/,security_model=none,multidevs=remap"},
		{"-device", "virtio-9p-pci,fsdev=root,mount_tag=bunkerlab.root"},
		{"-chardev", "socket,id=port0,path=/tmp/run,,1/stdout"},
		{"-device", "virtserialport,bus=ports.0,chardev=port0,name=bunkerlab.stdout"},
		{"-chardev", "socket,id=port1,path=/tmp/run,,1/stderr"},
		{"-device", "virtserialport,bus=ports.0,chardev=port1,name=bunkerlab.stderr"},
		{"-chardev", "socket,id=port2,path=/tmp/run,,1/status"},
		{"-device", "virtserialport,bus=ports.0,chardev=port2,name=bunkerlab.status"},
	}
	for _, w := range want {
		if !hasPair(args, w[0], w[1]) {
			t.Errorf("args lack %s %s:\n%s", w[0], w[1], strings.Join(args, " "))
		}
	}
	for _, flag := range []string{"-nodefaults", "-no-reboot", "-no-user-config"} {
		if !slices.Contains(args, flag) {
			t.Errorf("args lack %s", flag)
		}
	}
	if !strings.Contains(kernelCmdline, "panic=-1") || !strings.Contains(kernelCmdline, "console=ttyS0") {
		t.Errorf("kernel command line %q lacks panic=-1 or console=ttyS0", kernelCmdline)
	}
}

func hasPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}
