package inventory

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// moduleRoot finds the directory holding go.mod above the test's.
func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// TestNoAddressLiteralsOutside checks that no port, MMIO address or MSR
// index of the inventory is written as a literal in the VMM's code outside
// this package. Small values (below 0x100) are too common as bit masks and
// register offsets to check this way. The guest tool (cmd/bunkerguest) is
// exempt: its probe scans ranges independently, without trusting the VMM.
func TestNoAddressLiteralsOutside(t *testing.T) {
	want := map[uint64]Entry{}
	for _, e := range table {
		switch e.Space {
		case SpacePIO, SpaceMMIO, SpaceMSR:
			if e.Base >= 0x100 {
				want[e.Base] = e
			}
		}
	}
	// Values that equal an entry's base by coincidence.
	coincidences := map[string]uint64{
		"vmm/kvm/msrfilter.go": 0x600, // KVM_MSR_FILTER_MAX_BITMAP_SIZE, a byte count
	}
	root := moduleRoot(t)
	exempt := []string{"vmm/inventory", "cmd/bunkerguest", "testdata"}
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			for _, x := range exempt {
				if rel == x {
					return filepath.SkipDir
				}
			}
			if strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		checked++
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.INT {
				return true
			}
			v, err := strconv.ParseUint(strings.ReplaceAll(lit.Value, "_", ""), 0, 64)
			if err != nil {
				return true
			}
			if e, ok := want[v]; ok && coincidences[filepath.ToSlash(rel)] != v {
				t.Errorf("%s: literal %s is the base of inventory entry %s; look it up in the inventory instead", fset.Position(lit.Pos()), lit.Value, e.ID)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("checked only %d files under %s", checked, root)
	}
}
