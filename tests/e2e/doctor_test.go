//go:build lab

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/doctor"
	"github.com/sanvol/sanvol/host"
)

// The guest has only lo. A real host has two storage NICs, each on its
// own subnet with a portal of the array behind it, and a management NIC
// with the default route. Here each NIC is the host end of a veth pair
// whose other end, in its own network namespace, holds the portal
// addresses: a packet to a portal really leaves through "its" NIC, with
// that NIC's MTU, and a smaller MTU on the far end drops big frames as a
// misconfigured switch would.

const (
	docPortal1  = "10.201.1.2"
	docPortal1b = "10.201.1.3"
	docPortal2  = "10.201.2.2"
	docHostUUID = "5a9e1c7e-0000-4000-8000-00000000d0c1"
	docPeerUUID = "5a9e1c7e-0000-4000-8000-00000000d0c2"
	docIQN      = "iqn.2026-01.lab.sanvol:doctor-guest"
)

// vethNIC makes host NIC <name> with address hostCIDR, its peer in
// namespace ns with the given addresses, and the MTUs of both ends.
func vethNIC(t *testing.T, name, ns, hostCIDR string, hostMTU, peerMTU int, peerCIDRs ...string) {
	t.Helper()
	peer := name + "p"
	mustRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _, _ = run("ip", "netns", "delete", ns) })
	mustRun(t, "ip", "link", "add", name, "mtu", strconv.Itoa(hostMTU), "type", "veth", "peer", "name", peer, "mtu", strconv.Itoa(peerMTU), "netns", ns)
	t.Cleanup(func() { _, _ = run("ip", "link", "delete", name) })
	mustRun(t, "ip", "address", "add", hostCIDR, "dev", name)
	mustRun(t, "ip", "link", "set", name, "up")
	for _, c := range peerCIDRs {
		mustRun(t, "ip", "-n", ns, "address", "add", c, "dev", peer)
	}
	mustRun(t, "ip", "-n", ns, "link", "set", peer, "up")
	mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
}

// managementNIC is the NIC xapi manages the host through, with the
// default route, named in /etc/xensource-inventory as on XCP-ng.
func managementNIC(t *testing.T) {
	t.Helper()
	vethNIC(t, "sdmgmt", "sdnsm", "192.0.2.1/24", 1500, 1500, "192.0.2.254/24")
	mustRun(t, "ip", "route", "add", "default", "via", "192.0.2.254", "dev", "sdmgmt")
	t.Cleanup(func() { _, _ = run("ip", "route", "delete", "default", "via", "192.0.2.254") })
	replaceFile(t, "/etc/xensource-inventory", "PRODUCT_BRAND='XCP-ng'\nINSTALLATION_UUID='"+docHostUUID+"'\nMANAGEMENT_INTERFACE='sdmgmt'\n")
}

// replaceFile writes a file for the test and puts back what was there.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	old, err := os.ReadFile(path)
	existed := err == nil
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if existed {
			_ = os.WriteFile(path, old, 0o644)
		} else {
			_ = os.Remove(path)
		}
	})
}

// poolXapi stands in for xapi on its local socket (the lab has no
// toolstack): a pool of this guest and one other host with their own
// identities, so the pool-wide uniqueness checks have something to compare.
func poolXapi(t *testing.T) {
	t.Helper()
	hostNQN := strings.TrimSpace(readFileT(t, "/etc/nvme/hostnqn"))
	sock := host.XapiSocket
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Method string `json:"method"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		var res any
		switch req.Method {
		case "session.login_with_password":
			res = "OpaqueRef:lab"
		case "host.get_all_records":
			res = map[string]any{
				"OpaqueRef:guest": map[string]any{"uuid": docHostUUID, "name_label": "lab", "iscsi_iqn": docIQN, "other_config": map[string]string{"hostnqn": hostNQN}},
				"OpaqueRef:peer": map[string]any{"uuid": docPeerUUID, "name_label": "peer", "iscsi_iqn": "iqn.2026-01.lab.sanvol:peer",
					"other_config": map[string]string{"hostnqn": "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000ee"}},
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": 1, "result": res})
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); _ = os.Remove(sock) })
}

func readFileT(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// runDoctor runs `sanvol doctor --json` as an admin would and decodes the
// report; the exit code is the worst finding.
func runDoctor(t *testing.T, typ string, targets []string, extra ...string) (doctor.Report, int) {
	t.Helper()
	bin := SanvolBinary()
	if bin == "" {
		t.Fatalf("no sanvol binary in %s", LabDir())
	}
	args := append([]string{"doctor", "--type", typ, "--target", strings.Join(targets, ","), "--json"}, extra...)
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sanvol %s: %v", strings.Join(args, " "), err)
	}
	var rep doctor.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("sanvol %s: exit %d, not a JSON report: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, err, stdout.String(), stderr.String())
	}
	var text bytes.Buffer
	_ = rep.Text(&text)
	t.Logf("sanvol %s (exit %d):\n%s", strings.Join(args, " "), code, text.String())
	return rep, code
}

func docResult(t *testing.T, rep doctor.Report, check string) doctor.Result {
	t.Helper()
	for _, r := range rep.Results {
		if r.Check == check {
			return r
		}
	}
	t.Fatalf("no %s in the report", check)
	return doctor.Result{}
}

func needPing(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("the lab image has no ping (iputils-ping): the MTU check cannot measure")
	}
}

// A correct two-path host: every check passes, for both SR types.
func TestDoctorTwoPaths(t *testing.T) {
	needPing(t)
	managementNIC(t)
	vethNIC(t, "sdst1", "sdns1", "10.201.1.1/24", 1500, 1500, docPortal1+"/24")
	vethNIC(t, "sdst2", "sdns2", "10.201.2.1/24", 1500, 1500, docPortal2+"/24")
	replaceFile(t, "/etc/iscsi/initiatorname.iscsi", "InitiatorName="+docIQN+"\n")
	poolXapi(t)

	for _, typ := range []string{doctor.TypeISCSI, doctor.TypeNVMeTCP} {
		t.Run(typ, func(t *testing.T) {
			rep, code := runDoctor(t, typ, []string{docPortal1, docPortal2})
			for _, r := range rep.Results {
				if r.Status != doctor.Pass && r.Status != doctor.Skip {
					t.Errorf("%s: %s %s (fix: %s)", r.Check, r.Status, r.Summary, r.Fix)
				}
			}
			if code != 0 {
				t.Errorf("exit %d, want 0", code)
			}
			for _, c := range []string{"paths.count", "paths.redundancy", "paths.management", "paths.default-route", "net.mtu"} {
				if r := docResult(t, rep, c); r.Status != doctor.Pass {
					t.Errorf("%s: %s", c, r.Status)
				}
			}
			if ev := strings.Join(docResult(t, rep, "paths.count").Evidence, "\n"); !strings.Contains(ev, docPortal1) || !strings.Contains(ev, "via sdst1") || !strings.Contains(ev, "via sdst2") {
				t.Errorf("paths evidence:\n%s", ev)
			}
		})
	}
}

// Both portals behind one NIC: a single point of failure.
func TestDoctorOneInterface(t *testing.T) {
	needPing(t)
	managementNIC(t)
	vethNIC(t, "sdst1", "sdns1", "10.201.1.1/24", 1500, 1500, docPortal1+"/24", docPortal1b+"/24")
	replaceFile(t, "/etc/iscsi/initiatorname.iscsi", "InitiatorName="+docIQN+"\n")
	poolXapi(t)

	rep, code := runDoctor(t, doctor.TypeISCSI, []string{docPortal1, docPortal1b})
	r := docResult(t, rep, "paths.redundancy")
	if r.Status != doctor.Warn || !strings.Contains(r.Summary, "single point of failure") || !strings.Contains(r.Summary, "sdst1") {
		t.Errorf("paths.redundancy: %s %q", r.Status, r.Summary)
	}
	if r.Fix == "" {
		t.Error("no fix")
	}
	if code != 1 {
		t.Errorf("exit %d, want 1 (worst finding a WARN)", code)
	}
}

// A jumbo-frame NIC whose far end (switch, array) has MTU 1500: the
// don't-fragment ping of MTU-28 bytes is lost, a 1500-byte one is not.
func TestDoctorMTUMismatch(t *testing.T) {
	needPing(t)
	managementNIC(t)
	vethNIC(t, "sdst1", "sdns1", "10.201.1.1/24", 9000, 1500, docPortal1+"/24")
	vethNIC(t, "sdst2", "sdns2", "10.201.2.1/24", 9000, 9000, docPortal2+"/24")
	replaceFile(t, "/etc/iscsi/initiatorname.iscsi", "InitiatorName="+docIQN+"\n")
	poolXapi(t)

	rep, code := runDoctor(t, doctor.TypeISCSI, []string{docPortal1, docPortal2})
	r := docResult(t, rep, "net.mtu")
	if r.Status != doctor.Fail {
		t.Fatalf("net.mtu: %s %q", r.Status, r.Summary)
	}
	for _, want := range []string{"MTU mismatch to " + docPortal1, "sdst1 has MTU 9000", "suspects: the interface sdst1, the switch ports on the way, the array's portal " + docPortal1} {
		if !strings.Contains(r.Summary, want) {
			t.Errorf("summary lacks %q: %s", want, r.Summary)
		}
	}
	if strings.Contains(r.Summary, docPortal2) {
		t.Errorf("the good path is blamed too: %s", r.Summary)
	}
	ev := strings.Join(r.Evidence, "\n")
	for _, want := range []string{"ping -M do -s 8972 -c 1 -W 2 -I sdst1 " + docPortal1, "ping -M do -s 1472 -c 1 -W 2 -I sdst1 " + docPortal1, "ping -M do -s 8972 -c 1 -W 2 -I sdst2 " + docPortal2} {
		if !strings.Contains(ev, want) {
			t.Errorf("evidence lacks %q:\n%s", want, ev)
		}
	}
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
}
