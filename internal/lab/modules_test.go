package lab

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestModuleName(t *testing.T) {
	tests := map[string]string{
		"kernel/arch/x86/kvm/kvm-amd.ko.xz": "kvm_amd",
		"kernel/fs/9p/9p.ko":                "9p",
		"kernel/net/9p/9pnet_virtio.ko.gz":  "9pnet_virtio",
		"kernel/drivers/x/a-b-c.ko.zst":     "a_b_c",
		"kernel/drivers/virtio/virtio.ko":   "virtio",
	}
	for file, want := range tests {
		if got := moduleName(file); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", file, got, want)
		}
	}
}

func TestParseModinfoDepends(t *testing.T) {
	tests := []struct {
		info string
		want []string
	}{
		{"license=GPL\x00depends=kvm,ccp\x00name=kvm_amd\x00", []string{"kvm", "ccp"}},
		{"depends=\x00name=irqbypass\x00", nil},
		{"name=x\x00", nil},
		{"depends=9pnet\x00", []string{"9pnet"}},
		{"depends=crc-t10dif,,x\x00", []string{"crc_t10dif", "x"}},
		{"xdepends=a\x00", nil},
	}
	for _, tt := range tests {
		if got := parseModinfoDepends([]byte(tt.info)); !slices.Equal(got, tt.want) {
			t.Errorf("parseModinfoDepends(%q) = %q, want %q", tt.info, got, tt.want)
		}
	}
}

func TestResolveModules(t *testing.T) {
	files := map[string]string{
		"irqbypass": "irqbypass.ko.xz", "kvm": "kvm.ko.xz", "ccp": "ccp.ko.xz",
		"kvm_amd": "kvm-amd.ko.xz", "kvm_intel": "kvm-intel.ko.xz",
		"netfs": "netfs.ko.xz", "9pnet": "9pnet.ko.xz", "9pnet_virtio": "9pnet_virtio.ko.xz", "9p": "9p.ko.xz", "tun": "tun.ko.xz",
		"a": "a.ko", "b": "b.ko",
	}
	deps := map[string][]string{
		"kvm": {"irqbypass"}, "kvm_amd": {"kvm", "ccp"}, "kvm_intel": {"kvm"},
		"9pnet_virtio": {"9pnet"}, "9p": {"9pnet", "netfs"},
		"a": {"b"}, "b": {"a"},
	}
	depends := func(name string) ([]string, error) {
		if _, ok := files[name]; !ok {
			return nil, fmt.Errorf("module %s: not in tree", name)
		}
		return deps[name], nil
	}
	tests := []struct {
		name    string
		roots   []moduleRoot
		builtin map[string]bool
		want    string // "path[@flag] ..." in load order
		wantErr string
	}{
		{name: "lab modules", roots: moduleRoots,
			want: "irqbypass.ko.xz kvm.ko.xz ccp.ko.xz kvm-amd.ko.xz@svm kvm-intel.ko.xz@vmx 9pnet.ko.xz 9pnet_virtio.ko.xz netfs.ko.xz 9p.ko.xz tun.ko.xz"},
		{name: "shared dependency loads once", roots: []moduleRoot{{name: "9pnet_virtio"}, {name: "9p"}, {name: "9pnet"}},
			want: "9pnet.ko.xz 9pnet_virtio.ko.xz netfs.ko.xz 9p.ko.xz"},
		{name: "dependency of a conditional root is unconditional", roots: []moduleRoot{{name: "kvm_intel", cpuFlag: "vmx"}, {name: "kvm"}},
			want: "irqbypass.ko.xz kvm.ko.xz kvm-intel.ko.xz@vmx"},
		{name: "builtin root skipped", roots: []moduleRoot{{name: "virtio_console"}, {name: "kvm"}}, builtin: map[string]bool{"virtio_console": true},
			want: "irqbypass.ko.xz kvm.ko.xz"},
		{name: "missing root", roots: []moduleRoot{{name: "virtio_console"}}, wantErr: "module virtio_console: not in tree"},
		{name: "cycle", roots: []moduleRoot{{name: "a"}}, wantErr: "dependency cycle a -> b -> a"},
	}
	for _, tt := range tests {
		loads, err := resolveModules(tt.roots, files, tt.builtin, depends)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error = %v, want %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		var got []string
		for _, l := range loads {
			s := l.path
			if l.cpuFlag != "" {
				s += "@" + l.cpuFlag
			}
			got = append(got, s)
		}
		if strings.Join(got, " ") != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, strings.Join(got, " "), tt.want)
		}
	}
}

// signed appends a module signature of sigLen bytes to obj, as
// scripts/sign-file does.
func signed(obj []byte, sigLen int) []byte {
	b := append(slices.Clone(obj), bytes.Repeat([]byte{0xAA}, sigLen)...)
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0} // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(sigLen))
	return append(append(b, info...), moduleSigMagic...)
}

func TestStripModuleSignature(t *testing.T) {
	obj := []byte("\x7fELF module body")
	bogus := signed(obj, 5)
	binary.BigEndian.PutUint32(bogus[len(bogus)-len(moduleSigMagic)-4:], 1<<30)
	tests := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed(obj, 262), obj},
		{"empty signature", signed(obj, 0), obj},
		{"unsigned", obj, obj},
		{"signature longer than the file", bogus, bogus},
		{"magic only", []byte(moduleSigMagic), []byte(moduleSigMagic)},
	}
	for _, tt := range tests {
		if got := stripModuleSignature(tt.in); !bytes.Equal(got, tt.want) {
			t.Errorf("%s: stripModuleSignature = %q, want %q", tt.name, got, tt.want)
		}
	}
}
