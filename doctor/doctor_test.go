package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

func noProblems(t *testing.T, rep Report) {
	t.Helper()
	if rep.Worst() > Pass {
		t.Fatalf("expected no WARN or FAIL:\n%s", text(rep))
	}
	if rep.ExitCode() != 0 {
		t.Fatalf("exit code %d", rep.ExitCode())
	}
}

func TestHealthyISCSIHost(t *testing.T) {
	h := newFakeHost(t)
	h.attach(TypeISCSI, iscsiConfig())
	h.deps.Health = map[string]HealthReporter{TypeISCSI: fakeHealth{h: transport.Health{Total: 2, Live: 2}}}
	rep := h.doctor(Options{})
	noProblems(t, rep)
	for _, id := range []string{chkPathCount, chkPathLive, chkRedundancy, chkManagement, chkDefaultRoute, chkBond, chkMTU,
		chkISCSId, chkMultipathd, chkNodeRecords, chkMap, chkIQN, chkPoolIQN} {
		if r := find(t, rep, id); r.Status != Pass {
			t.Errorf("%s: %s %s", id, r.Status, r.Summary)
		}
	}
	// Not applicable here: the NICs are on separate subnets, nothing is
	// bound.
	for _, id := range []string{chkARP, chkRPFilter} {
		if r := find(t, rep, id); r.Status != Skip {
			t.Errorf("%s: %s", id, r.Status)
		}
	}
	if got := find(t, rep, chkMTU).Evidence[0]; !strings.Contains(got, "ping -M do -s 8972 -c 1 -W 2 -I eth1 10.0.1.10") {
		t.Errorf("MTU evidence %q", got)
	}
}

func TestHealthyNVMeHost(t *testing.T) {
	h := newFakeHost(t)
	h.attach(TypeNVMeTCP, nvmeConfig())
	rep := h.doctor(Options{})
	noProblems(t, rep)
	for _, id := range []string{chkNVMeCLI, chkNVMeTCP, chkNVMeMP, chkIOPolicy, chkHostNQN, chkPoolHostNQN} {
		if r := find(t, rep, id); r.Status != Pass {
			t.Errorf("%s: %s %s", id, r.Status, r.Summary)
		}
	}
	if h.pool.recorded != nil {
		t.Errorf("recorded %v although the record was right", h.pool.recorded)
	}
	if r := find(t, rep, chkNVMeCLI); r.Summary != "nvme-cli 2.3" {
		t.Errorf("nvme.cli summary %q", r.Summary)
	}
}

func TestNoSRAttached(t *testing.T) {
	h := newFakeHost(t)
	rep := h.doctor(Options{})
	expect(t, rep, chkScope, Warn, "no sanvol SR is attached", "sanvol doctor --type")
	if rep.ExitCode() != 1 {
		t.Errorf("exit %d", rep.ExitCode())
	}
}

func TestOptionErrors(t *testing.T) {
	h := newFakeHost(t)
	for _, o := range []Options{
		{Type: "nfs", Config: map[string]string{"target": "10.0.1.10"}},
		{Type: TypeISCSI},
	} {
		if _, err := Run(context.Background(), h.deps, o); !errors.Is(err, host.ErrInvalid) {
			t.Errorf("%+v: err %v", o, err)
		}
	}
	if _, err := Run(context.Background(), h.deps, Options{SR: srUUID}); !errors.Is(err, host.ErrNotAttached) {
		t.Errorf("unattached SR: %v", err)
	}
}

func TestPreflightMode(t *testing.T) {
	h := newFakeHost(t)
	h.remove("/sys/class/iscsi_session") // a host that has never logged in
	rep := h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "10.0.1.10,10.0.2.10:3260"}})
	noProblems(t, rep)
	if r := find(t, rep, chkPathCount); !strings.Contains(r.Scope, "not attached") {
		t.Errorf("scope %q", r.Scope)
	}
	// No SR attached: node records and map are for later.
	if r := find(t, rep, chkNodeRecords); r.Status != Skip {
		t.Errorf("node records: %s", r.Status)
	}
	if r := find(t, rep, chkMap); r.Status != Skip {
		t.Errorf("map: %s", r.Status)
	}
}

func TestBadDeviceConfig(t *testing.T) {
	h := newFakeHost(t)
	rep := h.doctor(Options{Type: TypeNVMeTCP, Config: map[string]string{"target": "10.0.1.10,10.0.2.10", "host-iface": "eth1,eth2,eth3"}})
	expect(t, rep, chkConfig, Fail, "host-iface names 3 interfaces for 2 portals", "one interface for all portals")
	rep = h.doctor(Options{Type: TypeISCSI, Config: map[string]string{"target": "array.example"}})
	expect(t, rep, chkConfig, Fail, "cannot resolve array.example", "resolvable host names")
}

func TestReportFormats(t *testing.T) {
	h := newFakeHost(t)
	h.attach(TypeISCSI, map[string]string{"target": "10.0.1.10", "targetIQN": targetIQN, "SCSIid": lunWWID})
	rep := h.doctor(Options{})
	if rep.ExitCode() != 2 {
		t.Fatalf("exit %d", rep.ExitCode())
	}
	out := text(rep)
	for _, want := range []string{"SR " + srUUID + " (iscsi-ng)", "FAIL  paths.count", "fix: ", "source: iSCSI on XCP-ng, Best Practices Guide, ", "PASS, 1 WARN, 1 FAIL"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	var buf bytes.Buffer
	if err := rep.JSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Results  []Result
		Summary  map[string]int
		ExitCode int `json:"exit_code"`
	}
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.ExitCode != 2 || back.Summary["FAIL"] != 1 || len(back.Results) != len(rep.Results) {
		t.Fatalf("JSON: %+v", back)
	}
	if back.Results[0].Status != rep.Results[0].Status || back.Results[0].Check != rep.Results[0].Check {
		t.Errorf("round trip: %+v", back.Results[0])
	}
}

// Every check is registered with a source and documented in docs/doctor.md.
func TestChecksDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/doctor.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range Checks() {
		if len(c.Sources) == 0 {
			t.Errorf("%s has no source", c.ID)
		}
		if !bytes.Contains(doc, []byte("`"+c.ID+"`")) {
			t.Errorf("docs/doctor.md does not describe %s", c.ID)
		}
	}
}
