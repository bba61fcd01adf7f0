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

func statID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Ctime: st.Ctim.Nano()}, nil
}

// layerIDs returns the identity of every layer file, after checking that
// each is private.
func (a *Artifact) layerIDs() ([]fileID, error) {
	var ids []fileID
	for _, l := range a.manifest.Layers {
		f, err := a.openBlob(l)
		if err != nil {
			return nil, err
		}
		err = checkPrivate(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		p, _ := blobPath(l.Digest)
		id, err := statID(filepath.Join(a.path, p))
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// privatePath reports whether path is owned by this user or root and not
// writable by group or others.
func privatePath(path string) bool {
	st, err := os.Lstat(path)
	if err != nil || st.Mode().Perm()&0o022 != 0 || st.Mode()&os.ModeSymlink != 0 {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && (sys.Uid == 0 || sys.Uid == uint32(os.Geteuid()))
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
	for _, p := range []string{a.path, filepath.Join(a.path, "blobs"), filepath.Join(a.path, "blobs", "sha256"), filepath.Join(a.path, StampFile)} {
		if !privatePath(p) {
			return false
		}
	}
	b, err := os.ReadFile(filepath.Join(a.path, StampFile))
	if err != nil || len(b) > MaxIndexSize {
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
	if !privatePath(a.path) {
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
