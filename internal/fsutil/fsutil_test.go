package fsutil

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteBytes(p, 0o640, []byte("one")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := WriteFile(p, 0o640, func(w io.Writer) error {
		w.Write([]byte("partial"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("failed write: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Errorf("after a failed write the file holds %q", b)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", st.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d entries after a failed write, want 1", len(ents))
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	mine, err := OwnedDir(dir, "stage-")
	if err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(dir, "stage-999999999-00")
	other := filepath.Join(dir, "unrelated-999999999-00")
	for _, d := range []string{dead, other} {
		os.Mkdir(d, 0o700)
	}
	RemoveStale(dir, "stage-")
	for d, want := range map[string]bool{mine: true, dead: false, other: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", d, err == nil, want)
		}
	}
}
