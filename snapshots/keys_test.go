package snapshots

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func TestGenerateAndLoadKeys(t *testing.T) {
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	pub, err := GenerateKey(privPath, pubPath)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{privPath: 0o600, pubPath: 0o644 &^ umask(t)} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", path, fi.Mode().Perm(), want)
		}
	}
	priv, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Equal(pub) || !priv.Public().(ed25519.PublicKey).Equal(pub) {
		t.Fatal("loaded keys differ from the generated pair")
	}

	// A loaded key signs artifacts that the loaded public key opens.
	path := filepath.Join(dir, "a.snap")
	if _, err := Write(t.Context(), path, testContents(t, nil), priv); err != nil {
		t.Fatal(err)
	}
	a, err := Open(path, loaded)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()

	if _, err := GenerateKey(privPath, filepath.Join(dir, "other.pub")); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateKey over an existing private key: %v", err)
	}
	if _, err := GenerateKey(filepath.Join(dir, "other.key"), pubPath); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateKey over an existing public key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "other.key")); !errors.Is(err, os.ErrNotExist) {
		t.Error("failed GenerateKey left its private key behind")
	}

	if err := os.Chmod(privPath, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(privPath); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadPrivateKey of a group-readable key: %v", err)
	}
}

// umask returns the process's umask, by creating a file with mode 0777.
func umask(t *testing.T) os.FileMode {
	p := filepath.Join(t.TempDir(), "probe")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return 0o777 &^ fi.Mode().Perm()
}

func TestParseKeyErrors(t *testing.T) {
	pub, priv := testKey()
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ecPrivDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecDER})
	ecPrivPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecPrivDER})
	withHeader := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}})

	for _, tc := range []struct {
		name  string
		data  []byte
		parse func([]byte) error
		msg   string
	}{
		{"public ok", append([]byte("\n"), pubPEM...), parsePub, ""},
		{"private ok", privPEM, parsePriv, ""},
		{"public empty", nil, parsePub, "no PEM"},
		{"public given private", privPEM, parsePub, `PEM block is "PRIVATE KEY", want "PUBLIC KEY"`},
		{"private given public", pubPEM, parsePriv, `PEM block is "PUBLIC KEY", want "PRIVATE KEY"`},
		{"two keys", append(pubPEM, pubPEM...), parsePub, "data after the PEM"},
		{"trailing text", append(pubPEM, "x"...), parsePub, "data after the PEM"},
		{"headers", withHeader, parsePub, "has headers"},
		{"ECDSA public", ecPEM, parsePub, "not Ed25519"},
		{"ECDSA private", ecPrivPEM, parsePriv, "not Ed25519"},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{0x30, 1}}), parsePub, "parse public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.parse(tc.data)
			switch {
			case tc.msg == "" && err != nil:
				t.Fatal(err)
			case tc.msg != "" && (err == nil || !strings.Contains(err.Error(), tc.msg)):
				t.Errorf("error %v, want one containing %q", err, tc.msg)
			}
		})
	}
}

func parsePub(b []byte) error  { _, err := ParsePublicKey(b); return err }
func parsePriv(b []byte) error { _, err := ParsePrivateKey(b); return err }

func TestSignVerify(t *testing.T) {
	pub, priv := testKey()
	other, _, _ := ed25519.GenerateKey(nil)
	msg := digest.FromString("manifest")
	sig, err := Sign(priv, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(pub, msg, sig); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		pub  ed25519.PublicKey
		msg  digest.Digest
		sig  []byte
		is   error
	}{
		{"other key", other, msg, sig, ErrSignature},
		{"changed digest", pub, digest.FromString("other manifest"), sig, ErrSignature},
		{"short signature", pub, msg, sig[:63], ErrSignature},
		{"no signature", pub, msg, nil, ErrSignature},
		{"short key", pub[:31], msg, sig, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.pub, tc.msg, tc.sig)
			if err == nil {
				t.Fatal("verified")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v does not wrap %v", err, tc.is)
			}
		})
	}
	if _, err := Sign(priv[:32], msg); err == nil {
		t.Error("Sign with a short key succeeded")
	}
	snap := writeTest(t, testContents(t, nil))
	if _, err := Open(snap, nil); err == nil || !strings.Contains(err.Error(), "no public key") {
		t.Errorf("Open without a key: %v", err)
	}
	if _, err := Open(snap, pub[:16]); err == nil || !strings.Contains(err.Error(), "public key is 16 bytes") {
		t.Errorf("Open with a short key: %v", err)
	}
}

// TestOpenSSLInterop checks that the key files and the signature are what
// OpenSSL reads and writes for Ed25519, so that a manifest can be checked
// without this package.
func TestOpenSSLInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed")
	}
	run := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(openssl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	dir := t.TempDir()
	privPath, pubPath := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	if _, err := GenerateKey(privPath, pubPath); err != nil {
		t.Fatal(err)
	}
	pubPEM, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := run("pkey", "-in", privPath, "-pubout"); string(got) != string(pubPEM) {
		t.Errorf("openssl derives public key\n%s\nwe wrote\n%s", got, pubPEM)
	}

	// OpenSSL verifies the signature over the manifest bytes.
	priv, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "a.snap")
	sum, err := Write(t.Context(), snap, testContents(t, nil), priv)
	if err != nil {
		t.Fatal(err)
	}
	sigs, err := filepath.Glob(filepath.Join(snap, "blobs/sha256/*"))
	if err != nil {
		t.Fatal(err)
	}
	payloadPath := filepath.Join(dir, "payload")
	if err := os.WriteFile(payloadPath, signedPayload(sum.Manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	verified := 0
	for _, p := range sigs {
		if st, err := os.Stat(p); err != nil || st.Size() != ed25519.SignatureSize {
			continue
		}
		run("pkeyutl", "-verify", "-pubin", "-inkey", pubPath, "-rawin", "-in", payloadPath, "-sigfile", p)
		verified++
	}
	if verified != 1 {
		t.Fatalf("found %d signature blobs, want 1", verified)
	}

	// A key OpenSSL generated loads.
	osslKey := filepath.Join(dir, "openssl.key")
	run("genpkey", "-algorithm", "ed25519", "-out", osslKey)
	if err := os.Chmod(osslKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(osslKey); err != nil {
		t.Error(err)
	}
}
