//go:build lab

package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/tests/labtarget"
)

// cmdlineWatch polls /proc/<pid>/cmdline of every process while a call
// runs, as any unprivileged user could, and records each command line that
// shows a secret. It also counts the processes it saw, so that a watch
// that saw nothing cannot pass for proof.
type cmdlineWatch struct {
	secrets []string
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	leaks   []string
	seen    map[string]bool // "pid comm" of processes seen
}

func watchCmdlines(secrets ...string) *cmdlineWatch {
	w := &cmdlineWatch{secrets: secrets, stop: make(chan struct{}), done: make(chan struct{}), seen: map[string]bool{}}
	self := strconv.Itoa(os.Getpid())
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			dirs, _ := filepath.Glob("/proc/[0-9]*")
			for _, d := range dirs {
				pid := filepath.Base(d)
				if pid == self {
					continue // the test process holds the secrets in memory, not in argv
				}
				b, err := os.ReadFile(d + "/cmdline")
				if err != nil || len(b) == 0 {
					continue
				}
				line := strings.ReplaceAll(string(b), "\x00", " ")
				w.mu.Lock()
				w.seen[pid+" "+strings.Fields(line)[0]] = true
				for _, s := range w.secrets {
					if s != "" && strings.Contains(line, s) && !slices.Contains(w.leaks, line) {
						w.leaks = append(w.leaks, line)
					}
				}
				w.mu.Unlock()
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

// finish stops the watch and fails the test on any leak; it returns the
// names of the programs seen.
func (w *cmdlineWatch) finish(t *testing.T) map[string]int {
	t.Helper()
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.leaks {
		// The leak is reported without the secret itself.
		t.Errorf("a secret was on a command line in /proc: %s", host.Redact(l, w.secrets))
	}
	progs := map[string]int{}
	for k := range w.seen {
		_, cmd, _ := strings.Cut(k, " ")
		progs[filepath.Base(cmd)]++
	}
	return progs
}

// DH-HMAC-CHAP keys (host and controller) never appear in any process's
// command line while sanvol attaches, probes and detaches (#13): sanvol
// writes the connect options to /dev/nvme-fabrics itself.
func TestNVMeAuthKeysNeverOnCommandLine(t *testing.T) {
	nvmeLab(t)
	hk, ck := genKey(t), genKey(t)
	tg, ok := authTarget(t, "authproc", &labtarget.DHChap{HostKey: hk, CtrlKey: ck})
	if !ok {
		t.Skip(labtarget.ErrNoTargetAuth.Error())
	}
	secrets := mapSecrets{}
	cfg := authCfg(tg, secrets, hk, ck)
	tr := newNVMeTransport(t, secrets)
	w := watchCmdlines(hk, ck)
	dev, err := tr.Attach(context.Background(), cfg)
	if err == nil {
		if _, err := tr.Probe(context.Background(), cfg, nil); err != nil {
			t.Errorf("probe: %v", err)
		}
		err = tr.Detach(context.Background(), cfg, nil)
	}
	progs := w.finish(t)
	t.Logf("programs seen during the calls: %v", progs)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Health.Live != 2 {
		t.Errorf("health %+v", dev.Health)
	}
	if len(progs) == 0 {
		t.Error("the watch saw no process at all")
	}
}

// enforceDiscoveryAuth makes LIO demand CHAP for sendtargets discovery
// (global to the target; undone at cleanup).
func enforceDiscoveryAuth(t *testing.T, user, password string) {
	t.Helper()
	dir := "/sys/kernel/config/target/iscsi/discovery_auth"
	set := func(attr, v string) error { return os.WriteFile(filepath.Join(dir, attr), []byte(v), 0o600) }
	if err := set("userid", user); err != nil {
		t.Skipf("LIO discovery_auth: %v", err)
	}
	if err := set("password", password); err != nil {
		t.Fatal(err)
	}
	if err := set("enforce_discovery_auth", "1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = set("enforce_discovery_auth", "0") })
}

// iSCSI CHAP (login and mutual, and discovery CHAP) reaches iscsiadm's
// records without ever being on a command line; the node record that
// holds it is 0600, real iscsiadm logs in with it, and the discovery
// credentials are gone from /etc/iscsi/send_targets after use (#13).
func TestISCSISecretsNeverOnCommandLine(t *testing.T) {
	initiator := initiatorIQN(t)
	chap := labtarget.CHAP{User: "sanvolinit", Password: "initsecret-7f3a91", MutualUser: "sanvoltgt", MutualPassword: "tgtsecret-52c8e0"}
	tg := newISCSILUN(t, "chapproc", labtarget.Addr1, labtarget.Addr2)
	if err := tg.AllowInitiator(initiator, &chap); err != nil {
		t.Fatal(err)
	}
	enforceDiscoveryAuth(t, chap.User, chap.Password)
	secrets := mapSecrets{"s-out": chap.Password, "s-in": chap.MutualPassword}
	tr := newISCSITransport(t, secrets)
	cfg := iscsiConfig(tg, labtarget.Addr1, labtarget.Addr2)
	cfg["chapuser"], cfg["chappassword_secret"] = chap.User, "s-out"
	cfg["incoming_chapuser"], cfg["incoming_chappassword_secret"] = chap.MutualUser, "s-in"
	probeCfg := map[string]string{"target": cfg["target"], "chapuser": chap.User, "chappassword_secret": "s-out"}

	w := watchCmdlines(chap.Password, chap.MutualPassword)
	cands, perr := tr.Probe(context.Background(), probeCfg, nil)
	dev, aerr := tr.Attach(context.Background(), cfg)
	records := nodeRecordsWith(t, tg.IQN, chap.Password)
	var derr error
	if aerr == nil {
		derr = tr.Detach(context.Background(), cfg, nil)
	}
	progs := w.finish(t)
	t.Logf("programs seen during the calls: %v", progs)
	if perr != nil || aerr != nil || derr != nil {
		t.Fatalf("probe: %v; attach: %v; detach: %v", perr, aerr, derr)
	}
	if len(cands) == 0 {
		t.Error("discovery with CHAP found no target")
	}
	if progs["iscsiadm"] == 0 {
		t.Error("the watch never saw iscsiadm run")
	}
	if dev.Health.Live != 2 {
		t.Errorf("health %+v", dev.Health)
	}
	if len(records) == 0 {
		t.Error("no node record held the CHAP secret while attached")
	}
	for f, mode := range records {
		if mode != 0o600 {
			t.Errorf("%s holds the CHAP secret with mode %v", f, mode)
		}
	}
	sts, _ := filepath.Glob("/etc/iscsi/send_targets/*/st_config")
	for _, f := range sts {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), chap.Password) || strings.Contains(string(b), "auth.username = "+chap.User) {
			t.Errorf("%s keeps the discovery credentials after use", f)
		}
	}
	assertClean(t, tg)
}

// nodeRecordsWith lists the node record files of a target that contain
// the secret, with their modes.
func nodeRecordsWith(t *testing.T, iqn, secret string) map[string]os.FileMode {
	out := map[string]os.FileMode{}
	_ = filepath.Walk("/etc/iscsi/nodes/"+iqn, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), secret) {
			out[p] = fi.Mode().Perm()
		}
		return nil
	})
	t.Logf("node records holding the secret: %v", out)
	return out
}

// An IQN with "/.." makes real iscsiadm write a node record outside
// /etc/iscsi (it builds the path from the name); sanvol refuses the name
// before any iscsiadm runs (#13).
func TestISCSINodeRecordTraversal(t *testing.T) {
	const base = "iqn.2003-01.lab.sanvol:trav"
	const outside = "/tmp/sanvol-traversal"
	evil := base + "/../../../.." + outside
	_ = os.RemoveAll(outside)
	t.Cleanup(func() {
		_ = os.RemoveAll(outside)
		_, _ = run("iscsiadm", "-m", "node", "-T", base, "-o", "delete")
	})
	// A valid record of the base name makes the directory the ".." steps
	// out of, as any earlier discovery of such a target would.
	mustRun(t, "iscsiadm", "-m", "node", "-o", "new", "-T", base, "-p", labtarget.Addr1+":3260")

	// What real iscsiadm does with the name, for the record.
	out, err := run("iscsiadm", "-m", "node", "-o", "new", "-T", evil, "-p", labtarget.Addr2+":3260")
	_, statErr := os.Stat(outside)
	t.Logf("iscsiadm -o new -T %q: err=%v, %s exists: %v\n%s", evil, err, outside, statErr == nil, out)
	_ = os.RemoveAll(outside)

	tr := newISCSITransport(t, nil)
	cfg := map[string]string{"target": labtarget.Addr1 + "," + labtarget.Addr2, "targetIQN": evil, "SCSIid": "36001405aaaaaaaaaaaaaaaaaaaaaaaaa"}
	_, aerr := tr.Attach(context.Background(), cfg)
	_, perr := tr.Probe(context.Background(), cfg, nil)
	for name, err := range map[string]error{"attach": aerr, "probe": perr} {
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, host.ErrInvalid) || !strings.Contains(err.Error(), "targetIQN") {
			t.Errorf("%s: want InvalidArgument naming targetIQN, got %v", name, err)
		}
	}
	if _, err := os.Stat(outside); err == nil {
		t.Errorf("sanvol let iscsiadm write %s", outside)
	}
}
