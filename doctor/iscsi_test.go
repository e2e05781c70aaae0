package doctor

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
)

func iscsiRun(h *fakeHost) Report {
	h.attach(TypeISCSI, iscsiConfig())
	return h.doctor(Options{})
}

func TestDaemonsNotRunning(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/proc/101")
	h.remove("/proc/102")
	rep := iscsiRun(h)
	expect(t, rep, chkISCSId, Fail, "iscsid is not running and sanvol cannot start it: systemctl does not answer", "iscsi-initiator-utils")
	expect(t, rep, chkMultipathd, Fail, "multipathd is not running", "systemctl enable --now multipathd")
}

func TestNodeRecordTimeout(t *testing.T) {
	h := newFakeHost(t)
	h.node(targetIQN, "10.0.2.10:3260", "default", "120")
	h.write("/sys/class/iscsi_session/session2/recovery_tmo", "120")
	r := expect(t, iscsiRun(h), chkNodeRecords, Fail,
		"node -T "+targetIQN+" -p 10.0.2.10:3260 -I default has replacement_timeout=120, want 10; session 2 has recovery_tmo=120, want 10",
		"iscsiadm -m node -T "+targetIQN+" -p 10.0.2.10:3260 -I default -o update -n node.session.timeo.replacement_timeout -v 10")
	if !strings.Contains(r.Fix, "echo 10 > /sys/class/iscsi_session/session2/recovery_tmo") {
		t.Errorf("fix %q", r.Fix)
	}
}

func TestNodeRecordTimeoutFromDeviceConfig(t *testing.T) {
	h := newFakeHost(t)
	cfg := iscsiConfig()
	cfg["replacement-timeout"] = "15"
	h.attach(TypeISCSI, cfg)
	expect(t, h.doctor(Options{}), chkNodeRecords, Fail, "replacement_timeout=10, want 15", "-v 15")
}

func TestNodeRecordStartsAtBoot(t *testing.T) {
	h := newFakeHost(t)
	h.run.on("iscsiadm -m node -T "+targetIQN+" -p 10.0.1.10:3260 -I default",
		"node.startup = automatic\nnode.session.timeo.replacement_timeout = 10\n", nil)
	expect(t, iscsiRun(h), chkNodeRecords, Fail, "logs in at boot (node.startup=automatic)", "-o update -n node.startup -v manual")
}

// Bound paths use sanvol's iface records.
func TestNodeRecordsOfBoundPaths(t *testing.T) {
	h := newFakeHost(t)
	h.node(targetIQN, "10.0.1.10:3260", "sanvol-eth1", "10")
	h.node(targetIQN, "10.0.2.10:3260", "sanvol-eth2", "10")
	cfg := iscsiConfig()
	cfg["iface"] = "eth1=10.0.1.10,eth2=10.0.2.10"
	h.attach(TypeISCSI, cfg)
	r := expect(t, h.doctor(Options{}), chkNodeRecords, Pass, "replacement_timeout=10", "")
	if !strings.Contains(strings.Join(r.Evidence, "\n"), "-I sanvol-eth2: replacement_timeout=10") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

func TestNodeRecordsMissing(t *testing.T) {
	h := newFakeHost(t)
	h.run.off("iscsiadm -m node -T " + targetIQN + " -p 10.0.1.10:3260 -I default")
	h.run.off("iscsiadm -m node -T " + targetIQN + " -p 10.0.2.10:3260 -I default")
	h.run.on("iscsiadm -m node", "", exitErr(21, "iscsiadm: No records found"))
	h.remove("/sys/class/iscsi_session")
	expect(t, iscsiRun(h), chkNodeRecords, Fail, "the attached SR has no node records", "xe pbd-plug")
}

// With targetIQN=* the targets come from the sessions to the portals.
func TestNodeRecordsWildcard(t *testing.T) {
	h := newFakeHost(t)
	cfg := iscsiConfig()
	cfg["targetIQN"] = "*"
	h.attach(TypeISCSI, cfg)
	h.write("/sys/class/iscsi_session/session2/recovery_tmo", "5")
	expect(t, h.doctor(Options{}), chkNodeRecords, Fail, "session 2 has recovery_tmo=5, want 10", "session2/recovery_tmo")
}

func TestMapStanzaNotLoaded(t *testing.T) {
	h := newFakeHost(t)
	h.run.on("multipathd -kshow config", "defaults {\n\tpolling_interval 5\n}\nmultipaths {\n}\n", nil)
	expect(t, iscsiRun(h), chkMap, Fail, "multipathd has no stanza for "+lunWWID, `multipathd -k"reconfigure"`)
}

func TestMapNoPathRetry(t *testing.T) {
	h := newFakeHost(t)
	cfg := iscsiConfig()
	cfg["path-loss-policy"] = "queue:30"
	h.attach(TypeISCSI, cfg)
	// 30 s at a 10 s polling interval is 3 checks; multipathd runs 12.
	h.run.on("multipathd -kshow config", "defaults {\n\tpolling_interval 10\n}\nmultipaths {\n\tmultipath {\n\t\twwid "+lunWWID+"\n\t\tno_path_retry 12\n\t}\n}\n", nil)
	expect(t, h.doctor(Options{}), chkMap, Fail, "multipathd runs no_path_retry 12 for "+lunWWID+", want 3", "reconfigure")
}

func TestMapDoesNotQueue(t *testing.T) {
	h := newFakeHost(t)
	h.run.on("dmsetup table "+lunWWID, "0 2097152 multipath 0 1 alua 1 1 service-time 0 2 1 8:16 1 8:32 1\n", nil)
	expect(t, iscsiRun(h), chkMap, Fail, "does not queue I/O", "dmsetup message "+lunWWID+" 0 queue_if_no_path")
}

func TestMapFailPolicy(t *testing.T) {
	h := newFakeHost(t)
	cfg := iscsiConfig()
	cfg["path-loss-policy"] = "fail"
	h.attach(TypeISCSI, cfg)
	h.run.on("multipathd -kshow config", "multipaths {\n\tmultipath {\n\t\twwid \""+lunWWID+"\"\n\t\tno_path_retry \"fail\"\n\t}\n}\n", nil)
	expect(t, h.doctor(Options{}), chkMap, Fail, "the map queues I/O when every path is down", "dmsetup message "+lunWWID+" 0 fail_if_no_path")
	h.run.on("dmsetup table "+lunWWID, "0 2097152 multipath 0 1 alua 1 1 service-time 0 2 1 8:16 1 8:32 1\n", nil)
	expect(t, h.doctor(Options{}), chkMap, Pass, "no_path_retry fail", "")
}

func TestMapMissing(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/sys/block/dm-3")
	expect(t, iscsiRun(h), chkMap, Fail, "no multipath map for "+lunWWID, `multipathd -k"add map `+lunWWID+`"`)
}

func TestInitiatorIQN(t *testing.T) {
	for _, c := range []struct {
		name, file string
		st         Status
		summary    string
	}{
		{"missing", "", Fail, "unreadable"},
		{"generate", "GenerateName=yes", Fail, "no InitiatorName"},
		{"placeholder", "InitiatorName=iqn.1994-05.com.redhat:", Fail, "placeholder"},
		{"not a name", "InitiatorName=host1", Fail, "not an iSCSI name"},
		{"ubuntu", "InitiatorName=iqn.2004-10.com.ubuntu:01:1a2b3c4d5e6f", Warn, "the distribution package generated"},
		{"debian", "InitiatorName=iqn.1993-08.org.debian:01:8b7c1d2e3f40", Warn, "the distribution package generated"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newFakeHost(t)
			if c.file == "" {
				h.remove(initiatorFile)
			} else {
				h.write(initiatorFile, c.file)
			}
			expect(t, iscsiRun(h), chkIQN, c.st, c.summary, "xe host-param-set uuid="+selfUUID+" iscsi_iqn=iqn.")
		})
	}
	h := newFakeHost(t)
	h.remove(inventoryPath)
	h.write(initiatorFile, "InitiatorName=iqn.2004-10.com.ubuntu:01:1a2b3c4d5e6f")
	expect(t, iscsiRun(h), chkIQN, Warn, "", "echo 'InitiatorName=iqn.")
}

func TestIQNDuplicateInPool(t *testing.T) {
	h := newFakeHost(t)
	h.pool.hosts[1].IQN = localIQN
	r := expect(t, iscsiRun(h), chkPoolIQN, Fail, "initiator IQN "+localIQN+" is also used by xcp2", "xe host-param-set uuid="+selfUUID+" iscsi_iqn=")
	if !strings.Contains(r.Summary, "corrupt") {
		t.Errorf("summary %q", r.Summary)
	}
}

func TestIQNRecordDiffersFromFile(t *testing.T) {
	h := newFakeHost(t)
	h.pool.hosts[0].IQN = "iqn.2024-01.com.example:old"
	r := expect(t, iscsiRun(h), chkPoolIQN, Pass, "unique", "")
	if !strings.Contains(r.Evidence[0], "xapi records iscsi_iqn=iqn.2024-01.com.example:old for this host") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

func TestIQNPoolUnreachable(t *testing.T) {
	h := newFakeHost(t)
	h.deps.Pool = nil
	expect(t, iscsiRun(h), chkPoolIQN, Warn, "cannot check pool-wide uniqueness", "systemctl status xapi")
}

// XCP-ng keeps iscsid.service disabled: with no session the doctor says
// sanvol will start it, and never tells the admin to enable it.
func TestIscsidStoppedSanvolStartsIt(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/proc/101")
	h.remove("/sys/class/iscsi_session")
	h.run.on("systemctl show -p LoadState iscsid.service", "LoadState=loaded\n", nil)
	r := expect(t, iscsiRun(h), chkISCSId, Pass, "sanvol starts it (systemctl start iscsid.service)", "")
	if strings.Contains(r.Fix+r.Summary, "enable") {
		t.Errorf("advice to enable a unit XCP-ng keeps disabled: %+v", r)
	}
}

func TestIscsidStoppedWithSessionsFails(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/proc/101")
	h.run.on("systemctl show -p LoadState iscsid.service", "LoadState=loaded\n", nil)
	expect(t, iscsiRun(h), chkISCSId, Fail, "while iSCSI sessions exist", "systemctl start iscsid.service")
}

func TestIscsidNotInstalled(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/proc/101")
	h.run.on("systemctl show -p LoadState iscsid.service", "LoadState=not-found\n", nil)
	expect(t, iscsiRun(h), chkISCSId, Fail, "iscsid.service is not installed", "yum install -y iscsi-initiator-utils")
}

// sm's refcount file for the IQN names an lvmoiscsi SR attached here: its
// detach would log sanvol's sessions out too.
func TestSMSharedTarget(t *testing.T) {
	h := newFakeHost(t)
	h.write(iscsi.SMRefDir+"/"+targetIQN, "7d0b1c2e-1111-4a2b-9c3d-4e5f60718293\n")
	h.write(iscsi.SMRefDir+"/iqn.2001-05.com.example:other", "8e1c2d3f-2222-4a2b-9c3d-4e5f60718293\n")
	r := expect(t, iscsiRun(h), chkSMShared, Fail, "logs out every session to the IQN", "its own target IQN")
	ev := strings.Join(r.Evidence, "\n")
	if !strings.Contains(ev, "7d0b1c2e-1111-4a2b-9c3d-4e5f60718293") || strings.Contains(ev, "8e1c2d3f") {
		t.Errorf("evidence %q", ev)
	}
}

func TestSMSharedTargetNone(t *testing.T) {
	h := newFakeHost(t)
	h.write(iscsi.SMRefDir+"/iqn.2001-05.com.example:other", "8e1c2d3f-2222-4a2b-9c3d-4e5f60718293\n")
	h.write(iscsi.SMRefDir+"/"+targetIQN, "") // sm unlinks it after its last detach; an empty one counts as none
	expect(t, iscsiRun(h), chkSMShared, Pass, "no SMAPIv1 iSCSI SR", "")
}

// fakeSMAPIv1 answers the pool-wide lookup as XenAPI would.
type fakeSMAPIv1 struct {
	srs map[string][]host.SMAPIv1SR
	err error
}

func (f fakeSMAPIv1) SMAPIv1ISCSISRsOn(_ context.Context, iqn string) ([]host.SMAPIv1SR, error) {
	return f.srs[iqn], f.err
}

// An lvmoiscsi SR of the pool on the IQN, attached on other hosts only:
// no reference file here, XenAPI's PBDs tell.
func TestSMSharedTargetInThePool(t *testing.T) {
	h := newFakeHost(t)
	h.deps.SMAPIv1 = fakeSMAPIv1{srs: map[string][]host.SMAPIv1SR{targetIQN: {{UUID: "9f2d3e4a-3333-4a2b-9c3d-4e5f60718293", Name: "sm LVM", Type: "lvmoiscsi", PBDs: 3}}}}
	r := expect(t, iscsiRun(h), chkSMShared, Fail, "logs out every session to the IQN", "its own target IQN")
	if ev := strings.Join(r.Evidence, "\n"); !strings.Contains(ev, "XenAPI: SMAPIv1 SR 9f2d3e4a-3333-4a2b-9c3d-4e5f60718293 (sm LVM, type lvmoiscsi, 3 PBD(s)) has device-config:targetIQN="+targetIQN) {
		t.Errorf("evidence %q", ev)
	}
}

// None in the pool: a pass that says the pool was read; XenAPI down: a
// pass on this host's files that says the pool was not.
func TestSMSharedTargetPoolNoneOrUnread(t *testing.T) {
	h := newFakeHost(t)
	h.deps.SMAPIv1 = fakeSMAPIv1{}
	expect(t, iscsiRun(h), chkSMShared, Pass, "no SMAPIv1 iSCSI SR (lvmoiscsi, iscsi) of the pool uses this SR's target IQN", "")
	h = newFakeHost(t)
	h.deps.SMAPIv1 = fakeSMAPIv1{err: errors.New("cannot log in to xapi")}
	r := expect(t, iscsiRun(h), chkSMShared, Pass, "is attached here on this SR's target IQN", "")
	if ev := strings.Join(r.Evidence, "\n"); !strings.Contains(ev, "only this host's were checked: cannot log in to xapi") {
		t.Errorf("evidence %q", ev)
	}
}
