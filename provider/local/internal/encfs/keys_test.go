package encfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/compute-sdk/compute"
)

func TestWrapUnwrap(t *testing.T) {
	master := bytes.Repeat([]byte{7}, MasterKeySize)
	other := bytes.Repeat([]byte{8}, MasterKeySize)
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != KeySize || bytes.Equal(key, make([]byte, KeySize)) {
		t.Fatalf("NewKey = %x, want %d random bytes", key, KeySize)
	}
	wrapped, err := Wrap(master, key, "i-0000abcd")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, key[:16]) {
		t.Fatal("wrapped key contains the plaintext key")
	}
	again, err := Wrap(master, key, "i-0000abcd")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(wrapped, again) {
		t.Fatal("two wraps of one key are identical: nonce not random")
	}
	tampered := bytes.Clone(wrapped)
	tampered[len(tampered)-1] ^= 1

	tests := []struct {
		name    string
		master  []byte
		wrapped []byte
		aad     string
		wantErr error
	}{
		{"round trip", master, wrapped, "i-0000abcd", nil},
		{"wrong instance", master, wrapped, "i-0000abce", ErrUnwrap},
		{"wrong master", other, wrapped, "i-0000abcd", ErrUnwrap},
		{"tampered", master, tampered, "i-0000abcd", ErrUnwrap},
		{"truncated", master, wrapped[:10], "i-0000abcd", ErrUnwrap},
		{"short master", master[:16], wrapped, "i-0000abcd", compute.ErrInvalidArgument},
		{"zero master", make([]byte, MasterKeySize), wrapped, "i-0000abcd", compute.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Unwrap(tt.master, tt.wrapped, tt.aad)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Unwrap error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, key) {
				t.Fatalf("Unwrap = %x, want %x", got, key)
			}
		})
	}
}

func TestLoadOrCreateMasterKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "compute", "master.key")
	k1, err := LoadOrCreateMasterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != MasterKeySize {
		t.Fatalf("key has %d bytes", len(k1))
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700 | os.ModeDir} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode = %v, want %v", p, fi.Mode(), want)
		}
	}
	k2, err := LoadOrCreateMasterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1, k2) {
		t.Fatal("second load returned a different key")
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("key dir holds %d entries, want only the key (temp file left behind?)", len(ents))
	}

	bad := []struct {
		name  string
		setup func(t *testing.T, p string)
	}{
		{"world readable", func(t *testing.T, p string) { write(t, p, k1, 0o644) }},
		{"group readable", func(t *testing.T, p string) { write(t, p, k1, 0o640) }},
		{"too short", func(t *testing.T, p string) { write(t, p, k1[:16], 0o600) }},
		{"too long", func(t *testing.T, p string) { write(t, p, append(k1, 0), 0o600) }},
		{"symlink", func(t *testing.T, p string) {
			if err := os.Symlink(path, p); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "master.key")
			tt.setup(t, p)
			_, err := LoadOrCreateMasterKey(p)
			if !errors.Is(err, compute.ErrPrecondition) {
				t.Fatalf("err = %v, want ErrPrecondition", err)
			}
		})
	}
}

func write(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // WriteFile applies the umask
		t.Fatal(err)
	}
}
