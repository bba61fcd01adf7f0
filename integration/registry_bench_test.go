package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bunkerbuild/bunkerbuild/internal/testregistry"
	"github.com/bunkerbuild/bunkerbuild/snapshots/registry"
)

// BenchmarkRegistry builds the default guest twice from one recipe, pushes
// both artifacts to a registry on loopback (Debian's docker-registry) and
// pulls them back, and prints a table: time and bytes moved for each
// push and pull, and how much of the second artifact the registry already
// had from the first. Memory is stored in 16 MiB chunks so that two builds
// share what did not change; stored as one blob, any changed byte would
// make the second push upload all of it, which the last column shows.
func BenchmarkRegistry(b *testing.B) {
	buildVMM(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	type row struct {
		op           string
		took         time.Duration
		moved, total int64
	}
	var rows []row
	for i := range b.N {
		reg := testregistry.Start(b)
		dir := b.TempDir()
		var arts [2]string
		for j := range arts {
			d := filepath.Join(dir, fmt.Sprint(j))
			if err := os.Mkdir(d, 0o755); err != nil {
				b.Fatal(err)
			}
			rec, art := buildRecipe(b, d)
			if _, progress, status, err := bunkerbuild(ctx, "build", rec); err != nil || status != 0 {
				b.Fatalf("build: %d %v\n%s", status, err, progress)
			}
			arts[j] = art
		}
		o := registry.Options{PlainHTTP: true}
		for j, art := range arts {
			start := time.Now()
			_, st, err := registry.Push(ctx, art, fmt.Sprintf("%s/guests/default:build%d", reg.Addr, j), o)
			if err != nil {
				b.Fatal(err)
			}
			rows = append(rows, row{fmt.Sprintf("push build %d (run %d)", j+1, i+1), time.Since(start), st.BytesMoved, st.Bytes})
		}
		for j := range arts {
			pub := mustPub(b, filepath.Join(filepath.Dir(arts[j]), "key.pub"))
			start := time.Now()
			_, st, err := registry.Pull(ctx, fmt.Sprintf("%s/guests/default:build%d", reg.Addr, j), filepath.Join(dir, fmt.Sprintf("pulled%d", j)), pub, o)
			if err != nil {
				b.Fatal(err)
			}
			rows = append(rows, row{fmt.Sprintf("pull build %d (run %d)", j+1, i+1), time.Since(start), st.BytesMoved, st.Bytes})
		}
		reg.Stop()
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\n%-22s %10s %14s %14s %22s\n", "operation", "time", "moved", "artifact", "moved if memory were one blob")
	for _, r := range rows {
		oneBlob := "-"
		if strings.HasPrefix(r.op, "push build 2") {
			// One memory blob differs whenever any page differs, and the
			// state and config blobs differ between builds anyway: all
			// of the artifact would move.
			oneBlob = fmt.Sprintf("%.1f MiB", float64(r.total)/(1<<20))
		}
		fmt.Fprintf(&tbl, "%-22s %10v %10.1f MiB %10.1f MiB %22s\n", r.op, r.took.Round(time.Millisecond),
			float64(r.moved)/(1<<20), float64(r.total)/(1<<20), oneBlob)
	}
	fmt.Fprintf(&tbl, "registry: docker-registry on loopback inside the lab; the two builds boot the same recipe separately, so their memory differs where the guest's boots differed.\n")
	fmt.Print(tbl.String())
}
