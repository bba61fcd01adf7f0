package recipe

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must not panic, a recipe it
// returns must validate, and each error it returns must be an *Error in
// the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add([]byte(""))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("apiVersion: bunkerbuild/v1\nguest: {kernel: *k}\nbooted: {console: '(', timeout: -1h}\n---\n"))
	f.Add([]byte("machine: {memory: 1T, cpus: 1e9, <<: {}}\noutput: {path: ., signing-key: ~}\n"))
	if files, err := filepath.Glob(filepath.Join(recipesDir, "*.yaml")); err == nil {
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse("f.yaml", data)
		if err != nil {
			if r != nil {
				t.Fatal("Parse returned a recipe and an error")
			}
			checkErrors(t, err, "f.yaml")
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Parse accepted a recipe that Validate refuses: %v", err)
		}
	})
}
