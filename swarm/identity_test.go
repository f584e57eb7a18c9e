package swarm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentityCreatedPrivateAndReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "identity.key")
	k1, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equals(k2) {
		t.Fatal("second load returned another key")
	}
}

func TestIdentityRefusesReadableKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.key")
	if _, err := LoadIdentity(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadIdentity(path)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: err %v, want a refusal that says chmod 600", mode, err)
		}
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(path); err == nil {
		t.Fatal("garbage key file accepted")
	}
}
