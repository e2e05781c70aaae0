package doctor

import (
	"errors"
	"strings"
	"testing"
)

func nvmeRun(h *fakeHost) Report {
	h.attach(TypeNVMeTCP, nvmeConfig())
	return h.doctor(Options{})
}

func TestNVMeCLIMissing(t *testing.T) {
	h := newFakeHost(t)
	h.run.off("nvme version")
	expect(t, nvmeRun(h), chkNVMeCLI, Fail, "nvme-cli is not installed", "yum install -y nvme-cli")
}

// XCP-ng 8.3's dom0 kernel: 4.19, no nvme-tcp anywhere.
func TestNVMeTCPMissingOn419(t *testing.T) {
	h := newFakeHost(t)
	h.write("/proc/sys/kernel/osrelease", "4.19.0+1")
	h.remove("/sys/module/nvme_tcp")
	h.write("/lib/modules/4.19.0+1/modules.dep", "kernel/drivers/nvme/host/nvme-core.ko:\nkernel/drivers/nvme/host/nvme-fabrics.ko: kernel/drivers/nvme/host/nvme-core.ko\nkernel/drivers/nvme/host/nvme-rdma.ko: kernel/drivers/nvme/host/nvme-fabrics.ko")
	h.write("/boot/config-4.19.0+1", "CONFIG_NVME_CORE=m\nCONFIG_NVME_MULTIPATH=y\nCONFIG_NVME_FABRICS=m\nCONFIG_NVME_RDMA=m")
	r := expect(t, nvmeRun(h), chkNVMeTCP, Fail,
		"kernel 4.19.0+1 has no nvme-tcp module: NVMe/TCP entered Linux 5.0, and XCP-ng 8.2 and 8.3 ship a 4.19 dom0 kernel built without it",
		"use an iscsi-ng SR on this host")
	if got := strings.Join(r.Evidence, "\n"); !strings.Contains(got, "/boot/config-4.19.0+1 has no CONFIG_NVME_TCP") {
		t.Errorf("evidence %q", got)
	}
}

func TestNVMeTCPAvailableNotLoaded(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/sys/module/nvme_tcp")
	h.write("/lib/modules/6.1.0-18-amd64/modules.dep", "kernel/drivers/nvme/host/nvme-tcp.ko.xz: kernel/drivers/nvme/host/nvme-fabrics.ko.xz")
	expect(t, nvmeRun(h), chkNVMeTCP, Pass, "has nvme-tcp", "")
}

func TestNVMeTCPUnknown(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/sys/module/nvme_tcp")
	expect(t, nvmeRun(h), chkNVMeTCP, Warn, "cannot tell", "modprobe nvme-tcp")
}

func TestNVMeMultipathOff(t *testing.T) {
	h := newFakeHost(t)
	h.write(sysMultipathParam, "N")
	h.write("/etc/modprobe.d/local.conf", "options nvme_core multipath=N")
	r := expect(t, nvmeRun(h), chkNVMeMP, Fail, "native NVMe multipath is off", "echo 'options nvme_core multipath=Y' > /etc/modprobe.d/sanvol-nvme.conf")
	if !strings.Contains(strings.Join(r.Evidence, "\n"), "/etc/modprobe.d/local.conf: options nvme_core multipath=N") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

func TestNVMeMultipathNotBuilt(t *testing.T) {
	h := newFakeHost(t)
	h.remove(sysMultipathParam)
	h.write("/sys/module/nvme_core/refcnt", "3")
	expect(t, nvmeRun(h), chkNVMeMP, Fail, "built without CONFIG_NVME_MULTIPATH", "CONFIG_NVME_MULTIPATH=y")
}

func TestNVMeMultipathModprobeOverride(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/sys/module/nvme_core")
	h.write("/etc/modprobe.d/nvme.conf", "# local\noptions nvme-core multipath=0 io_timeout=30")
	expect(t, nvmeRun(h), chkNVMeMP, Fail, "modprobe.d turns native multipath off", "remove multipath=N")
}

func TestNVMeMultipathNotLoadedYet(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/sys/module/nvme_core")
	h.write("/boot/config-6.1.0-18-amd64", "CONFIG_NVME_CORE=m\nCONFIG_NVME_MULTIPATH=y")
	expect(t, nvmeRun(h), chkNVMeMP, Pass, "not loaded yet", "")
}

func TestIOPolicy(t *testing.T) {
	h := newFakeHost(t)
	h.write("/sys/class/nvme-subsystem/nvme-subsys0/iopolicy", "numa")
	expect(t, nvmeRun(h), chkIOPolicy, Fail, "iopolicy is numa, the SR wants round-robin",
		"echo round-robin > /sys/class/nvme-subsystem/nvme-subsys0/iopolicy")

	h = newFakeHost(t)
	h.attach(TypeNVMeTCP, map[string]string{"target": "10.0.1.10,10.0.2.10", "nqn": subNQN, "iopolicy": "queue-depth"})
	expect(t, h.doctor(Options{}), chkIOPolicy, Fail, "the SR wants queue-depth", "echo queue-depth > ")

	h = newFakeHost(t)
	h.remove("/sys/class/nvme-subsystem")
	expect(t, nvmeRun(h), chkIOPolicy, Skip, "not connected on this host", "")
}

func TestHostNQNMissing(t *testing.T) {
	h := newFakeHost(t)
	h.remove(hostNQNFile)
	rep := nvmeRun(h)
	expect(t, rep, chkHostNQN, Warn, "no /etc/nvme/hostnqn yet", `echo "nqn.2014-08.org.nvmexpress:uuid:$u" > /etc/nvme/hostnqn; echo "$u" > /etc/nvme/hostid`)
	expect(t, rep, chkPoolHostNQN, Warn, "cannot check pool-wide uniqueness", "/etc/nvme/hostnqn")
}

func TestHostNQNInvalid(t *testing.T) {
	h := newFakeHost(t)
	h.write(hostNQNFile, "host1")
	expect(t, nvmeRun(h), chkHostNQN, Fail, `holds "host1", which is not an NQN`, "/etc/nvme/hostnqn")
}

// device-config:hostnqn is copied to every host's PBD by sr-create.
func TestHostNQNInDeviceConfig(t *testing.T) {
	h := newFakeHost(t)
	h.attach(TypeNVMeTCP, map[string]string{"target": "10.0.1.10,10.0.2.10", "nqn": subNQN, "hostnqn": "nqn.2014-08.org.example:pool"})
	expect(t, h.doctor(Options{}), chkHostNQN, Warn, "every host of the pool presents the same host NQN", "no hostnqn key")
}

func TestHostNQNDuplicateInPool(t *testing.T) {
	h := newFakeHost(t)
	h.pool.hosts[1].HostNQN = localNQN
	expect(t, nvmeRun(h), chkPoolHostNQN, Fail, "host NQN "+localNQN+" is also used by xcp2 ("+otherUUID+")", "/proc/sys/kernel/random/uuid")
}

func TestHostNQNNotRecordedElsewhere(t *testing.T) {
	h := newFakeHost(t)
	h.pool.hosts[1].HostNQN = ""
	expect(t, nvmeRun(h), chkPoolHostNQN, Warn, "cannot check pool-wide uniqueness against xcp2", "run sanvol doctor --record on each host listed")
}

func TestHostNQNRecorded(t *testing.T) {
	h := newFakeHost(t)
	h.pool.hosts[0].HostNQN = ""
	h.attach(TypeNVMeTCP, nvmeConfig())
	r := expect(t, h.doctor(Options{Record: true}), chkPoolHostNQN, Pass, "unique among the pool's 2 hosts", "")
	if h.pool.recorded[selfUUID] != localNQN {
		t.Errorf("recorded %v", h.pool.recorded)
	}
	if !strings.Contains(r.Evidence[0], "recorded this host's NQN in XenAPI") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

// Without --record the doctor writes nothing, and says how to record.
func TestHostNQNNotRecordedWithoutRecord(t *testing.T) {
	h := newFakeHost(t)
	h.pool.hosts[0].HostNQN = ""
	r := find(t, nvmeRun(h), chkPoolHostNQN)
	if h.pool.recorded != nil {
		t.Errorf("a run without --record recorded %v", h.pool.recorded)
	}
	if len(r.Evidence) == 0 || !strings.Contains(r.Evidence[0], "sanvol doctor --record") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

func TestPoolUnreachable(t *testing.T) {
	h := newFakeHost(t)
	h.pool.err = errors.New("cannot reach xapi on /var/lib/xcp/xapi")
	rep := nvmeRun(h)
	expect(t, rep, chkPoolHostNQN, Warn, "cannot check pool-wide uniqueness: cannot reach xapi", "systemctl status xapi")
	h = newFakeHost(t)
	h.deps.Pool = nil
	expect(t, nvmeRun(h), chkPoolHostNQN, Warn, "cannot check pool-wide uniqueness: no XenAPI access", "xe host-list")
	h = newFakeHost(t)
	h.remove(inventoryPath)
	expect(t, nvmeRun(h), chkPoolHostNQN, Warn, "this host's XenAPI uuid is unknown", "xapi")
}
