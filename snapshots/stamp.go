package snapshots

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	digest "github.com/opencontainers/go-digest"

	"github.com/bunkerbuild/bunkerbuild/internal/fsutil"
	"github.com/bunkerbuild/bunkerbuild/internal/jsonstrict"
)

// StampFile, in an artifact's directory, records that this host hashed
// every layer and found it right: the snapshot manifest's digest, and for
// each layer file the device, inode, size and change time it had then.
// [Artifact.VerifyCached] trusts it instead of hashing again only when
// nobody but this user or root could have written the files since: the
// stamp, the directories and every layer must be private (owned by this
// user or root, not writable by group or others), and every file's change
// time, which only the kernel sets, must be unchanged. That is the trust
// that mapping the layers copy-on-write needs anyway (see checkPrivate).
const StampFile = ".bunkerbuild-verified"

type stamp struct {
	Manifest digest.Digest `json:"manifest"`
	Layers   []fileID      `json:"layers"`
}

type fileID struct {
	Dev, Ino uint64
	Size     int64
	Ctime    int64 // ns
}

// idOf identifies a file by what only its owner or the kernel could have
// changed since.
func idOf(fi os.FileInfo) (fileID, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, errors.New("no stat data")
	}
	return fileID{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Ctime: st.Ctim.Nano()}, nil
}

// layerIDs returns the identity of every layer file, after checking that
// each is private. The files are opened through the artifact's os.Root,
// the directory Open opened, and identified by the open file, so a
// directory or file renamed into place afterwards is not the one checked.
func (a *Artifact) layerIDs() ([]fileID, error) {
	var ids []fileID
	for _, l := range a.manifest.Layers {
		f, err := a.openBlob(l)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		f.Close()
		if err != nil {
			return nil, err
		}
		if err := private(st); err != nil {
			return nil, err
		}
		id, err := idOf(st)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// privateName reports whether name, inside the artifact, is private (see
// private) and not a symbolic link.
func (a *Artifact) privateName(name string) bool {
	st, err := a.root.Lstat(name)
	return err == nil && st.Mode()&os.ModeSymlink == 0 && private(st) == nil
}

// VerifyCached is Verify, skipped when the artifact's stamp shows this
// host already verified these very files and nobody else could have
// changed them since. It reports whether it hashed the layers. After a
// full verification it writes the stamp, if the directory is private.
func (a *Artifact) VerifyCached() (hashed bool, err error) {
	if a.stampValid() {
		a.verified = true
		return false, nil
	}
	if err := a.Verify(); err != nil {
		return true, err
	}
	a.writeStamp() // best effort: a read-only artifact is verified every time
	return true, nil
}

func (a *Artifact) stampValid() bool {
	for _, p := range []string{".", "blobs", "blobs/sha256", StampFile} {
		if !a.privateName(p) {
			return false
		}
	}
	b, err := a.readFile(StampFile, MaxIndexSize)
	if err != nil {
		return false
	}
	var s stamp
	if jsonstrict.Decode(b, &s) != nil || s.Manifest != a.desc.Digest || len(s.Layers) != len(a.manifest.Layers) {
		return false
	}
	ids, err := a.layerIDs()
	if err != nil {
		return false
	}
	for i := range ids {
		if ids[i] != s.Layers[i] {
			return false
		}
	}
	return true
}

func (a *Artifact) writeStamp() error {
	if !a.privateName(".") {
		return errors.New("the artifact directory is not private")
	}
	ids, err := a.layerIDs()
	if err != nil {
		return err
	}
	b, err := json.Marshal(stamp{Manifest: a.desc.Digest, Layers: ids})
	if err != nil {
		return err
	}
	if err := fsutil.WriteBytes(filepath.Join(a.path, StampFile), 0o644, b); err != nil {
		return fmt.Errorf("stamp: %w", err)
	}
	return nil
}
