package iscsi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
)

// CHAP reaches the node record through its file, never iscsiadm's argv,
// and the file that holds it is readable by root only.
func TestCHAPWrittenIntoRecordFile(t *testing.T) {
	f := newFakeHost(t)
	f.targets[testIQN].chap = &chap{"initiator1", "out-secret-123"}
	f.targets[testIQN].mutual = &chap{"target1", "in-secret-456"}
	cfg := baseConfig()
	cfg[KeyChapUser], cfg[KeyChapPassword+secretSuffix] = "initiator1", "u1"
	cfg[KeyIncomingUser], cfg[KeyIncomingPassword+secretSuffix] = "target1", "u2"
	cfg[KeyIface] = "eth1" // the tpgt/iface record layout; the default iface uses the flat one
	secrets := fakeSecrets{"u1": "out-secret-123", "u2": "in-secret-456"}
	dev := attach(t, f.transport(secrets), cfg)
	if dev.Health.Live != 2 {
		t.Fatalf("health %+v", dev.Health)
	}
	f.assertNoSecret(t, "out-secret-123", "in-secret-456")
	files := 0
	err := filepath.Walk(f.path("/etc/iscsi/nodes"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "out-secret-123") {
			files++
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s holds a secret with mode %v", p, fi.Mode().Perm())
			}
			if n := strings.Count(string(b), "node.session.auth.password = "); n != 1 {
				t.Errorf("%s has %d password lines", p, n)
			}
		}
		return nil
	})
	if err != nil || files != 2 {
		t.Errorf("%d record files hold the secret (%v), want one per portal", files, err)
	}
	if f.root.Exists("/run/lock/iscsi/lock.write") {
		t.Error("iscsiadm's database lock left held")
	}

	// A re-attach rewrites, never duplicates, the settings.
	attach(t, f.transport(secrets), cfg)
	f.assertNoSecret(t, "out-secret-123", "in-secret-456")
}

// sanvol waits for iscsiadm's database lock like iscsiadm, and fails
// (not writes) when a running iscsiadm keeps it.
func TestCHAPRecordWaitsForIscsiadmLock(t *testing.T) {
	f := newFakeHost(t)
	f.targets[testIQN].chap = &chap{"initiator1", "s"}
	f.write("/run/lock/iscsi/lock", "")
	if err := os.Link(f.path("/run/lock/iscsi/lock"), f.path("/run/lock/iscsi/lock.write")); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	cfg[KeyChapUser], cfg[KeyChapPassword] = "initiator1", "s"
	tr := f.transport(nil)
	tr.to.Command = 50 * time.Millisecond
	_, err := tr.Attach(context.Background(), cfg)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "lock.write") {
		t.Fatalf("attach under a held lock: %v", err)
	}
	if !f.root.Exists("/run/lock/iscsi/lock.write") {
		t.Error("sanvol removed a lock it did not take")
	}
}

// Discovery CHAP is in the sendtargets record only while discovery runs.
func TestDiscoveryCHAPRemovedAfterUse(t *testing.T) {
	f := newFakeHost(t)
	f.targets[testIQN].discCHAP = &chap{"initiator1", "disc-secret"}
	cfg := map[string]string{KeyTarget: "127.0.0.1", KeyChapUser: "initiator1", KeyChapPassword + secretSuffix: "u"}
	if _, err := f.transport(fakeSecrets{"u": "disc-secret"}).Probe(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	rec := f.read("/etc/iscsi/send_targets/127.0.0.1,3260/st_config")
	if rec == "" {
		t.Fatal("no sendtargets record was made")
	}
	if strings.Contains(rec, "disc-secret") || strings.Contains(rec, "auth.username") || !strings.Contains(rec, "discovery.sendtargets.auth.authmethod = None") {
		t.Errorf("the sendtargets record keeps credentials:\n%s", rec)
	}
	// Also after a refused discovery.
	if _, err := f.transport(fakeSecrets{"u": "wrong"}).Probe(context.Background(), cfg, nil); !errors.Is(err, host.ErrAuth) {
		t.Fatalf("wrong discovery CHAP: %v", err)
	}
	if rec := f.read("/etc/iscsi/send_targets/127.0.0.1,3260/st_config"); strings.Contains(rec, "wrong") {
		t.Errorf("the sendtargets record keeps the refused credentials:\n%s", rec)
	}
	f.assertNoSecret(t, "disc-secret", "wrong")
}

func TestRecordLine(t *testing.T) {
	for in, want := range map[string][2]string{
		"node.session.auth.password = a b ":   {"node.session.auth.password", "a b"},
		"node.conn[0].port=3260":              {"node.conn[0].port", "3260"},
		"  iface.iscsi_ifacename =  default ": {"iface.iscsi_ifacename", "default"},
	} {
		k, v, ok := recordLine(in)
		if !ok || k != want[0] || v != want[1] {
			t.Errorf("recordLine(%q) = %q, %q, %v", in, k, v, ok)
		}
	}
	for _, in := range []string{"# BEGIN RECORD 2.0-874", "", "novalue", "a b = c"} {
		if _, _, ok := recordLine(in); ok {
			t.Errorf("recordLine(%q) accepted", in)
		}
	}
}

// The lock is taken where iscsiadm takes it: both LOCK_DIRs when they are
// distinct, once when /var/lock links to /run/lock.
func TestIdbmLockDirs(t *testing.T) {
	f := newFakeHost(t)
	f.mkdir("/run/lock")
	if err := os.Symlink("../run/lock", f.path("/var/lock")); err != nil {
		f.mkdir("/var")
		if err := os.Symlink("../run/lock", f.path("/var/lock")); err != nil {
			t.Fatal(err)
		}
	}
	tr := f.transport(nil)
	unlock, err := tr.idbmLock(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if !f.root.Exists("/run/lock/iscsi/lock.write") {
		t.Error("lock not taken in /run/lock/iscsi")
	}
	if _, err := tr.idbmLock(context.Background(), "test"); err == nil {
		t.Error("a second lock was granted while the first is held")
	}
	unlock()
	if f.root.Exists("/run/lock/iscsi/lock.write") {
		t.Error("lock not released")
	}
}
