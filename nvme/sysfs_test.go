package nvme

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// The trees under testdata/sysfs-<kernel>[-degraded] are copies of a lab
// guest's real sysfs (symlinks kept) with two paths to one namespace of
// nqn.2014-08.lab.sanvol:capture, held by an active LV (dm-1); in the
// degraded one the path through 127.0.0.2 was cut.
const (
	realTree      = "testdata/sysfs-6.1.0-50-amd64"
	realDegraded  = "testdata/sysfs-6.1.0-50-amd64-degraded"
	realNQN       = "nqn.2014-08.lab.sanvol:capture"
	realHostNQN   = "nqn.2014-08.org.nvmexpress:uuid:8d4aba90-5d54-4c30-93e8-8dc0ac0f6eec"
	realUUID      = "22610436-fcb4-40bb-87a1-decdefb0d2e3"
	realNGUID     = "1f7ca0cd3447b8d470fa5015a8859342"
	realNamespace = "uuid." + realUUID
)

func realCfg() map[string]string {
	return map[string]string{KeyTarget: "127.0.0.1,127.0.0.2", KeyNQN: realNQN}
}

// copyTree copies a captured tree into dir, recreating its symlinks.
func copyTree(t *testing.T, src, dir string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(dir, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fakeKernelOn is a fake kernel that starts from a captured sysfs tree.
func fakeKernelOn(t *testing.T, tree string) *fakeKernel {
	t.Helper()
	k := newFakeKernel(t)
	copyTree(t, tree, k.dir)
	k.write(HostNQNFile, realHostNQN)
	k.write(HostIDFile, strings.TrimPrefix(realHostNQN, uuidNQNPfx))
	k.next = len(k.controllerNames())
	k.targets = map[string][]fakeNS{realNQN: {{nsid: 1, wwid: realNamespace, size: 524288}}}
	return k
}

func TestRealSysfsHealth(t *testing.T) {
	for _, c := range []struct {
		tree string
		want transport.Health
	}{
		{realTree, transport.Health{Total: 2, Live: 2, Detail: "2 of 2 paths live"}},
		{realDegraded, transport.Health{Total: 2, Live: 1, Detail: "1 of 2 paths live: 127.0.0.2:4420 connecting"}},
	} {
		t.Run(c.tree, func(t *testing.T) {
			// Health only reads, so it can look at the fixture in place.
			tr := New(Deps{Root: host.NewRoot(c.tree)})
			cfg := realCfg()
			cfg[KeyHostNQN] = realHostNQN
			h, err := tr.Health(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, h); diff != "" {
				t.Errorf("%s (-want +got):\n%s", c.tree, diff)
			}
			cfg[KeyHostNQN] = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000000"
			cfg[KeyHostID] = "00000000-0000-4000-8000-000000000000"
			if h, _ := tr.Health(context.Background(), cfg); h.Live != 0 {
				t.Errorf("%s: paths of another host identity count as ours: %+v", c.tree, h)
			}
		})
	}
}

func TestRealSysfsNamespaceIdentity(t *testing.T) {
	s := sysfs{root: host.NewRoot(realTree)}
	sub, found, err := s.subsystemByNQN(realNQN)
	if err != nil || !found {
		t.Fatalf("subsystem: %v %v", found, err)
	}
	if diff := cmp.Diff(Subsystem{Name: "nvme-subsys0", NQN: realNQN, IOPolicy: "round-robin",
		Controllers: []string{"nvme0", "nvme1"}, Heads: []string{"nvme0n1"}}, sub); diff != "" {
		t.Errorf("subsystem (-want +got):\n%s", diff)
	}
	ns := s.namespace("nvme0n1")
	if diff := cmp.Diff(Namespace{Name: "nvme0n1", NSID: 1, WWID: realNamespace, UUID: strings.ReplaceAll(realUUID, "-", ""),
		NGUID: realNGUID, Size: 256 << 20, Holders: []string{"dm-1"}}, ns); diff != "" {
		t.Errorf("namespace (-want +got):\n%s", diff)
	}
	if id, ok := ns.StableID(); !ok || id != realNamespace {
		t.Errorf("StableID = %q %v", id, ok)
	}
	for _, v := range []string{"1", realUUID, realNamespace, realNGUID, "1F7CA0CD-3447-B8D4-70FA-5015A8859342", "eui." + realNGUID} {
		id, err := ParseNamespaceID(v)
		if err != nil || !ns.Matches(id) {
			t.Errorf("namespace=%s does not match the captured namespace (%v)", v, err)
		}
	}
	for _, v := range []string{"2", "uuid." + dashed(realNGUID)} {
		if id, _ := ParseNamespaceID(v); ns.Matches(id) {
			t.Errorf("namespace=%s matches", v)
		}
	}
	ctrls, err := s.controllers()
	if err != nil || len(ctrls) != 2 {
		t.Fatalf("controllers %+v %v", ctrls, err)
	}
	want := Controller{Name: "nvme1", SubsysNQN: realNQN, State: "live", Transport: "tcp", TrAddr: "127.0.0.2", TrSvcID: "4420",
		HostNQN: realHostNQN, HostID: "8d4aba90-5d54-4c30-93e8-8dc0ac0f6eec"}
	if diff := cmp.Diff(want, ctrls[1]); diff != "" {
		t.Errorf("controller (-want +got):\n%s", diff)
	}
	if got := s.pathANAStates("nvme0"); got["nvme0c0n1"] != "optimized" {
		t.Errorf("ANA states %v", got)
	}
}

// Re-plugging on a host whose paths are up (or one reconnecting) must not
// run a single connect, even though sanvol would bind new paths to "lo"
// and these were made without host-iface.
func TestRealSysfsAttachAdoptsExistingPaths(t *testing.T) {
	for _, c := range []struct {
		tree, detail string
	}{
		{realTree, "2 of 2 paths live"},
		{realDegraded, "1 of 2 paths live: 127.0.0.2:4420 connecting"},
	} {
		t.Run(c.tree, func(t *testing.T) {
			k := fakeKernelOn(t, c.tree)
			k.write("/dev/nvme0n1", "") // the capture has no /dev
			cfg := realCfg()
			cfg[KeyNamespace] = realNamespace
			dev, err := k.transport(nil).Attach(context.Background(), cfg)
			if err != nil {
				t.Fatalf("%s: %v", c.tree, err)
			}
			if n := len(k.connects()); n != 0 {
				t.Errorf("%s: %d connects for paths that exist", c.tree, n)
			}
			// No udev ran on the capture: sanvol makes the by-id link itself
			// rather than hand on the kernel name.
			if dev.Path != "/dev/disk/by-id/nvme-"+realNamespace || dev.Health.Detail != c.detail {
				t.Errorf("%s: device %+v", c.tree, dev)
			}
			if target, err := k.root.EvalSymlinks(dev.Path); err != nil || target != "/dev/nvme0n1" {
				t.Errorf("%s: %s -> %s, %v", c.tree, dev.Path, target, err)
			}
		})
	}
}

func TestRealSysfsDetachRefusesHeldNamespaceThenDisconnects(t *testing.T) {
	k := fakeKernelOn(t, realDegraded)
	tr := k.transport(nil)
	err := tr.Detach(context.Background(), realCfg(), nil)
	if !errors.Is(err, host.ErrBusy) || !strings.Contains(err.Error(), "/dev/nvme0n1") || !strings.Contains(err.Error(), "dm-1") {
		t.Fatalf("err = %v, want Busy naming nvme0n1 and dm-1", err)
	}
	if len(k.calls) != 0 {
		t.Fatalf("ran %v while the namespace is held", k.calls)
	}
	// The LV is deactivated: dm-1 leaves holders/.
	holder := k.root.Path("/sys/block/nvme0n1/holders/dm-1")
	if err := os.Remove(holder); err != nil {
		t.Fatal(err)
	}
	if err := tr.Detach(context.Background(), realCfg(), nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range k.calls {
		got = append(got, strings.Join(c.Args, " "))
	}
	if diff := cmp.Diff([]string{"disconnect --device=nvme0", "disconnect --device=nvme1"}, got); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
	if n := len(k.controllerNames()); n != 0 {
		t.Errorf("%d controllers left", n)
	}
}

func TestRealSysfsDiagnostics(t *testing.T) {
	k := fakeKernelOn(t, realDegraded)
	d := k.transport(nil).Diagnostics(context.Background())
	for _, s := range []string{
		"subsystem nvme-subsys0 nqn=" + realNQN + " iopolicy=round-robin model=Linux",
		"path nvme0 tcp 127.0.0.1:4420 state=live host_iface=- hostnqn=" + realHostNQN + " dhchap=false ctrl_loss_tmo=",
		"path nvme1 tcp 127.0.0.2:4420 state=connecting",
		"ana=[nvme0c0n1=optimized]",
		"namespace /dev/nvme0n1 nsid=1 wwid=" + realNamespace + " size=268435456 holders=[dm-1]",
	} {
		if !strings.Contains(d, s) {
			t.Errorf("diagnostics lack %q:\n%s", s, d)
		}
	}
}

func TestParseRealListSubsysDegraded(t *testing.T) {
	subs, err := ParseListSubsys([]byte(readFixture(t, "nvme-list-subsys-2.3-degraded.json")))
	if err != nil || len(subs) != 1 || len(subs[0].Paths) != 2 {
		t.Fatalf("%+v %v", subs, err)
	}
	p := subs[0].Paths[1]
	if p.State != "connecting" || p.Address["traddr"] != "127.0.0.2" || subs[0].HostNQN != realHostNQN {
		t.Errorf("%+v", subs[0])
	}
}
