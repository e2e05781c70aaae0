package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/lvm/lvmtest"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

type fakeVolumes map[string][]VolumeState

func (f fakeVolumes) Volumes(_ context.Context, a volume.Attached) ([]VolumeState, error) {
	return f[a.UUID], nil
}

const otherSR = "44444444-4444-4444-8444-444444444444"

func statusHost(t *testing.T) (*fakeHost, StatusDeps, []volume.Attached) {
	h := newFakeHost(t)
	h.run.on("iscsiadm --version", "iscsiadm version 2.1.8", nil)
	h.run.on("multipath -h", "", exitErr(1, "multipath-tools v0.9.4 (12/19, 2022)\nUsage: ..."))
	h.run.on("lvm version", "  LVM version:     2.03.16(2) (2022-05-18)\n  Library version: 1.02.185 (2022-05-18)\n", nil)
	d := StatusDeps{Root: h.deps.Root, Runner: h.run, Net: h.net, Version: "0.1.0",
		Health: map[string]HealthReporter{
			TypeNVMeTCP: fakeHealth{h: transport.Health{Total: 2, Live: 2}},
			TypeISCSI:   fakeHealth{h: transport.Health{Total: 2, Live: 1, Detail: "1 of 2 paths live: 10.0.2.10:3260 FAILED"}},
		},
		Volumes: fakeVolumes{srUUID: {
			{Name: "v-aaaaaaaa-0000-4000-8000-000000000001", Size: 10 << 30, Active: true, Open: true},
			{Name: "v-aaaaaaaa-0000-4000-8000-000000000002", Size: 512 << 20, Active: true},
			{Name: "v-aaaaaaaa-0000-4000-8000-000000000003", Size: 1 << 30},
		}},
	}
	srs := []volume.Attached{
		{Type: TypeNVMeTCP, UUID: srUUID, Device: "/dev/disk/by-id/nvme-uuid.x", VG: "sanvol-" + srUUID,
			Configuration: map[string]string{"target": "10.0.1.10,10.0.2.10", "nqn": subNQN, "dhchap-password_secret": "5ec2e7"}},
		{Type: TypeISCSI, UUID: otherSR, Device: "/dev/mapper/" + lunWWID, VG: "sanvol-" + otherSR,
			Configuration: map[string]string{"target": "10.0.1.10,10.0.2.10", "targetIQN": targetIQN, "SCSIid": lunWWID, "chappassword": "plain"}},
	}
	return h, d, srs
}

func TestStatus(t *testing.T) {
	_, d, srs := statusHost(t)
	rep := ReadStatus(context.Background(), d, srs, false)
	var b bytes.Buffer
	if err := rep.Text(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"sanvol 0.1.0 on xcp1 (XCP-ng 8.3.0, kernel 6.1.0-18-amd64)",
		"tools: nvme-cli 2.3, open-iscsi 2.1.8, multipath-tools 0.9.4, lvm2 2.03.16",
		"SR " + srUUID + "  nvmetcp  OK  2/2 paths live",
		"target   10.0.1.10,10.0.2.10  nqn=" + subNQN,
		"volumes  2 of 3 active here: v-aaaaaaaa-0000-4000-8000-000000000001 (10.0 GiB, open), v-aaaaaaaa-0000-4000-8000-000000000002 (512 MiB)",
		"SR " + otherSR + "  iscsi-ng  DEGRADED  1/2 paths live",
		"paths    10.0.1.10:4420 via eth1, 10.0.2.10:4420 via eth2",
		"health   1 of 2 paths live: 10.0.2.10:3260 FAILED",
		"volumes  0 of 0 active here",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "transport ---") {
		t.Error("diagnostics without verbose")
	}
	var j bytes.Buffer
	if err := rep.JSON(&j); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(j.Bytes(), []byte("5ec2e7")) || bytes.Contains(j.Bytes(), []byte("plain")) {
		t.Errorf("a secret in the status: %s", j.String())
	}
	var back StatusReport
	if err := json.Unmarshal(j.Bytes(), &back); err != nil || len(back.SRs) != 2 || back.SRs[1].Health.Live != 1 {
		t.Fatalf("JSON round trip: %v %+v", err, back)
	}
}

// Plugin.diagnostics: the same text plus each transport's dump.
func TestStatusVerbose(t *testing.T) {
	_, d, srs := statusHost(t)
	var b bytes.Buffer
	_ = ReadStatus(context.Background(), d, srs, true).Text(&b)
	if !strings.Contains(b.String(), "--- iscsi-ng transport ---\nfake transport state\n") {
		t.Errorf("no diagnostics:\n%s", b.String())
	}
}

func TestStatusNothingAttached(t *testing.T) {
	h, d, _ := statusHost(t)
	h.run.off("nvme version")
	var b bytes.Buffer
	_ = ReadStatus(context.Background(), d, nil, false).Text(&b)
	for _, want := range []string{"no sanvol SR is attached on this host", "nvme-cli -,"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lacks %q:\n%s", want, b.String())
		}
	}
}

func TestStatusUnknownHealth(t *testing.T) {
	_, d, srs := statusHost(t)
	d.Health = nil
	var b bytes.Buffer
	_ = ReadStatus(context.Background(), d, srs, false).Text(&b)
	if !strings.Contains(b.String(), "nvmetcp  UNKNOWN\n   paths    10.0.1.10:4420 via eth1, 10.0.2.10:4420 via eth2\n   health   no transport for SR type nvmetcp") {
		t.Errorf("status:\n%s", b.String())
	}
}

// LVMVolumes reads the lab's real lvs report (lvm2 2.03.16).
func TestLVMVolumes(t *testing.T) {
	report, err := os.ReadFile("../lvm/testdata/lvs-2.03.16.json")
	if err != nil {
		t.Fatal(err)
	}
	run := &fakeRunner{}
	run.on("lvm version", "  LVM version:     2.03.16(2) (2022-05-18)\n", nil)
	run.on("lvm lvs", string(report), nil)
	l := LVMVolumes{LVM: lvm.New(run, nil), Root: host.NewRoot(t.TempDir())}
	vs, err := l.Volumes(context.Background(), volume.Attached{VG: "capiscsi", Device: "/dev/mapper/x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 || vs[0].Name != "vol-a" || !vs[0].Active || vs[1].Active || vs[0].Size != 33554432 {
		t.Fatalf("volumes %+v", vs)
	}
	if line := run.calls[len(run.calls)-1]; !strings.Contains(line, "metadata_read_only=1") {
		t.Errorf("status ran LVM without metadata_read_only: %s", line)
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	var b bytes.Buffer
	err := Watch(ctx, &b, 1, func(context.Context) (StatusReport, error) {
		n++
		if n == 3 {
			cancel()
		}
		return StatusReport{Host: "xcp1", Versions: []ToolVersion{{"sanvol", "0.1.0"}}}, nil
	})
	if err != nil || n != 3 || strings.Count(b.String(), "\033[H\033[2J") != 3 {
		t.Fatalf("err %v, %d loads, output %q", err, n, b.String())
	}
}

// An LV with damaged or foreign metadata shows up with its problem; the
// other volumes and the SR are listed as usual.
func TestStatusShowsVolumeProblems(t *testing.T) {
	good := "v-aaaaaaaa-0000-4000-8000-000000000001"
	bad := "v-aaaaaaaa-0000-4000-8000-000000000002"
	report := lvmtest.LVs(
		lvm.LV{Name: good, VG: "vg", Size: 8 << 20, Attr: "-wi-------", Tags: lvm.EncodeFields(map[string]string{"N": "good"})},
		lvm.LV{Name: bad, VG: "vg", Size: 8 << 20, Attr: "-wi-------", Tags: append(lvm.EncodeFields(map[string]string{"N": "bad"}), "sv.D.2:x")},
		lvm.LV{Name: "data", VG: "vg", Size: 4 << 20, Attr: "-wi-------"},
	).Stdout
	run := &fakeRunner{}
	run.on("lvm version", "  LVM version:     2.03.16(2) (2022-05-18)\n", nil)
	run.on("lvm lvs", report, nil)
	_, d, srs := statusHost(t)
	d.Volumes = LVMVolumes{LVM: lvm.New(run, nil), Root: host.NewRoot(t.TempDir())}
	srs[0].VG = "vg"
	var b bytes.Buffer
	_ = ReadStatus(context.Background(), d, srs[:1], false).Text(&b)
	out := b.String()
	for _, want := range []string{
		"volumes  0 of 3 active here",
		"problem  " + bad + ": damaged tags (tag field \"D\": chunk 0 missing or duplicated)",
		"problem  data: not a sanvol volume",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "problem  "+good) {
		t.Errorf("a healthy volume has a problem:\n%s", out)
	}
}
