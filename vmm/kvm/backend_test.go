package kvm

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCheckBackend(t *testing.T) {
	tests := []struct {
		modules []string
		wantErr bool
	}{
		{modules: []string{"kvm", "kvm_amd"}},
		{modules: []string{"kvm", "kvm_intel"}},
		{modules: []string{"kvm", "kvm_pvm"}, wantErr: true},
		{modules: []string{"kvm", "kvm_pvm", "kvm_intel"}},
		{modules: nil},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		for _, m := range tt.modules {
			if err := os.Mkdir(filepath.Join(dir, m), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := checkBackend(dir); (err != nil) != tt.wantErr {
			t.Errorf("modules %v: checkBackend = %v, want error %t", tt.modules, err, tt.wantErr)
		}
	}
}
