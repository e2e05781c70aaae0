package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type fakeXenAPI struct {
	up     bool
	values map[string]string
}

func (f fakeXenAPI) Secret(ctx context.Context, uuid string) (string, error) {
	if !f.up {
		return "", NewError(KindUnreachable, "resolve secret "+uuid, "cannot log in to xapi", "", nil)
	}
	v, ok := f.values[uuid]
	if !ok {
		return "", NewError(KindNotFound, "resolve secret "+uuid, "no such secret", "", nil)
	}
	return v, nil
}

const (
	sec1 = "0b6e1a3c-1111-4222-8333-944445555666"
	sec2 = "7c1d2e3f-aaaa-4bbb-8ccc-dddddddddddd"
)

// TestBootSecretsKeptRootOnlyAndUsedWithXapiDown: static-vdis add runs
// with xapi up and keeps the copy; at boot (xapi down) the copy serves.
func TestBootSecretsKeptRootOnlyAndUsedWithXapiDown(t *testing.T) {
	root := NewRoot(t.TempDir())
	up := fakeXenAPI{up: true, values: map[string]string{sec1: "chap-secret-1"}}
	// An ordinary call (xapi-storage-script's --json) keeps nothing.
	if v, err := (BootSecrets{Root: root, XenAPI: up}).Secret(context.Background(), sec1); err != nil || v != "chap-secret-1" {
		t.Fatalf("%q %v", v, err)
	}
	if root.Exists(BootSecretDir) {
		t.Fatal("a --json call kept a copy")
	}
	if _, err := (BootSecrets{Root: root, XenAPI: up, Keep: true}).Secret(context.Background(), sec1); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{BootSecretDir: 0o700, filepath.Join(BootSecretDir, sec1): 0o600} {
		st, err := os.Stat(root.Path(p))
		if err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want %v", p, st.Mode(), err, want)
		}
	}
	down := BootSecrets{Root: root, XenAPI: fakeXenAPI{}, Keep: true}
	if v, err := down.Secret(context.Background(), sec1); err != nil || v != "chap-secret-1" {
		t.Fatalf("boot: %q %v", v, err)
	}
	_, err := down.Secret(context.Background(), sec2)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("no copy: %v", err)
	}
	// xapi up but the secret gone: that error, not a stale copy.
	if _, err := (BootSecrets{Root: root, XenAPI: fakeXenAPI{up: true}}).Secret(context.Background(), sec1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted secret: %v", err)
	}
	if _, err := down.Secret(context.Background(), "../../etc/shadow"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("path in uuid: %v", err)
	}
}

// TestBootSecretsPruneWhatNoStaticVDINeeds: keeping a copy removes the
// copies no static VDI's device-config names any more (HA disabled).
func TestBootSecretsPruneWhatNoStaticVDINeeds(t *testing.T) {
	root := NewRoot(t.TempDir())
	up := BootSecrets{Root: root, XenAPI: fakeXenAPI{up: true, values: map[string]string{sec1: "a", sec2: "b"}}, Keep: true}
	if err := root.WriteFileAtomic(filepath.Join(StaticVDIsDir, "0", "device-config"), []byte(`{"target":"t","chappassword_secret":"`+sec1+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Secret(context.Background(), sec1); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Secret(context.Background(), sec2); err != nil {
		t.Fatal(err)
	}
	// sec1 is named by static VDI 0, sec2 is the one being kept now.
	for _, s := range []string{sec1, sec2} {
		if !root.Exists(filepath.Join(BootSecretDir, s)) {
			t.Fatalf("%s pruned", s)
		}
	}
	if err := os.RemoveAll(root.Path(StaticVDIsDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Secret(context.Background(), sec2); err != nil {
		t.Fatal(err)
	}
	if root.Exists(filepath.Join(BootSecretDir, sec1)) {
		t.Fatal("copy of a secret no static VDI uses survived")
	}
}
