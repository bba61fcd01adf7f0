package recipe

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/guestproto"
)

// recipesDir holds the example recipes and their documentation.
const recipesDir = "../../recipes"

// TestExampleRecipes loads every recipe in recipes/ and requires it valid.
func TestExampleRecipes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(recipesDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"default.yaml", "default-idle.yaml"} {
		if !slices.Contains(files, filepath.Join(recipesDir, want)) {
			t.Errorf("recipes/%s is missing", want)
		}
	}
	for _, f := range files {
		if _, err := Load(f); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// TestDefaultRecipe pins recipes/default.yaml to the default guest.
func TestDefaultRecipe(t *testing.T) {
	r, err := Load(filepath.Join(recipesDir, "default.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	build, err := filepath.Abs(filepath.Join(recipesDir, "..", "build"))
	if err != nil {
		t.Fatal(err)
	}
	want := Guest{Kernel: Default, Initrd: Default, Cmdline: "console=ttyS0 console=hvc0 reboot=k panic=-1 i8042.noaux quiet " + guestproto.MountParam + "=/dev/vda1:/mnt:vfat " + guestproto.CountParam + "=/tmp/count"}
	if r.Guest != want {
		t.Errorf("guest = %+v, want %+v", r.Guest, want)
	}
	if !reflect.DeepEqual(r.Machine, Machine{Memory: 512 << 20, CPUs: 2, Profile: ProfileFull, Serial: true,
		Disks: []Disk{{ID: "data", Size: 64 << 20}}, NIC: true}) {
		t.Errorf("machine = %+v", r.Machine)
	}
	b := r.Booted
	if !b.GuestSignal || b.Settle != 2*time.Second || b.Timeout != 5*time.Minute {
		t.Errorf("booted = %+v", b)
	}
	if r.Output != (Output{Path: filepath.Join(build, "default.snap"), SigningKey: filepath.Join(build, "signing.key")}) {
		t.Errorf("output = %+v", r.Output)
	}
}

// readme returns recipes/README.md.
func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(recipesDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeDocumentsEveryKey requires recipes/README.md to document every
// key the parser accepts, as a dotted path in backquotes (`machine.memory`),
// and its key tables to name no key the parser does not accept.
func TestReadmeDocumentsEveryKey(t *testing.T) {
	doc := readme(t)
	var accepted []string
	for _, s := range schema {
		for _, k := range s.keys {
			accepted = append(accepted, join2(s.section, k))
		}
	}
	for _, k := range accepted {
		if !strings.Contains(doc, "`"+k+"`") {
			t.Errorf("recipes/README.md does not document %s", k)
		}
	}

	_, keys, ok := strings.Cut(doc, "\n## Keys\n")
	if !ok {
		t.Fatal(`recipes/README.md has no "## Keys" section`)
	}
	keys, _, _ = strings.Cut(keys, "\n## ")
	rows := regexp.MustCompile("(?m)^\\| `([^`]+)` \\|").FindAllStringSubmatch(keys, -1)
	if len(rows) < len(accepted) {
		t.Errorf("recipes/README.md's key tables have %d rows, want %d", len(rows), len(accepted))
	}
	for _, row := range rows {
		if !slices.Contains(accepted, row[1]) {
			t.Errorf("recipes/README.md documents %s, which the parser does not accept", row[1])
		}
	}
}

// TestReadmeExample requires the README's example recipe to be valid.
func TestReadmeExample(t *testing.T) {
	_, rest, ok := strings.Cut(readme(t), "```yaml\n")
	if !ok {
		t.Fatal("recipes/README.md has no yaml example")
	}
	example, _, _ := strings.Cut(rest, "```")
	if _, err := Parse(filepath.Join(recipesDir, "README-example.yaml"), []byte(example)); err != nil {
		t.Errorf("recipes/README.md's example:\n%v", err)
	}
}
