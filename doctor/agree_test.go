package doctor

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/nvme"
)

// The doctor reads a device-config and the host through the transports,
// so it cannot disagree with the one that attached the SR. Each test is a
// disagreement the doctor had when it parsed on its own.

// multipath names the map in lower case; an SCSIid written in upper case
// is the same LUN, whose map the transport built and uses.
func TestUpperCaseSCSIidFindsTheMap(t *testing.T) {
	h := newFakeHost(t)
	cfg := iscsiConfig()
	cfg["SCSIid"] = strings.ToUpper(lunWWID)
	h.attach(TypeISCSI, cfg)
	r := expect(t, h.doctor(Options{}), chkMap, Pass, "map "+lunWWID, "")
	if !strings.Contains(strings.Join(r.Evidence, "\n"), "map "+lunWWID+" (dm-3)") {
		t.Errorf("evidence %q", r.Evidence)
	}
}

// The kernel wants a numeric traddr: the nvmetcp transport refuses a host
// name, and the doctor says so in the transport's words.
func TestNVMeHostNameRefusedAsTransport(t *testing.T) {
	h := newFakeHost(t)
	h.deps.Resolve = func(context.Context, string) ([]string, error) { return []string{"10.0.1.10"}, nil }
	cfg := map[string]string{"target": "array.example", "nqn": subNQN}
	r := expect(t, h.doctor(Options{Type: TypeNVMeTCP, Config: cfg}), chkConfig, Fail, "host names are not accepted", "")

	_, err := nvme.New(nvme.Deps{Root: h.deps.Root}).ParseConfig(context.Background(), cfg)
	var he *host.Error
	if !errors.As(err, &he) {
		t.Fatalf("the transport accepts the host name: %v", err)
	}
	if !strings.HasSuffix(r.Summary, he.Msg) || r.Fix != he.Fix {
		t.Errorf("doctor: %q / %q\ntransport: %q / %q", r.Summary, r.Fix, he.Msg, he.Fix)
	}
}

// A name that resolves to several addresses gives the portal the
// transport logs in to (its first IPv4 address), in every form of target.
func TestISCSINameResolvesAsTransport(t *testing.T) {
	resolve := func(_ context.Context, name string) ([]string, error) {
		return map[string][]string{
			"array.example": {"fd00::10", "10.0.2.10", "10.0.1.10"},
			"v6.example":    {"fd00::20", "fd00::21"},
		}[name], nil
	}
	cfg := map[string]string{"target": "array.example,v6.example:3261,10.0.1.10,[fd00::30]"}
	s := newSubject(t.Context(), newTransports(Deps{Resolve: resolve}), TypeISCSI, "", cfg)
	if s.err != nil {
		t.Fatal(s.err)
	}
	c, err := iscsi.New(iscsi.Deps{Lookup: resolve}).ParseConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var doctor, transport []string
	for _, p := range s.Portals {
		doctor = append(doctor, p.String())
	}
	for _, p := range c.Portals {
		transport = append(transport, p.String())
	}
	if strings.Join(doctor, ",") != strings.Join(transport, ",") {
		t.Errorf("doctor reads portals %v, the transport %v", doctor, transport)
	}
	if doctor[0] != "10.0.2.10:3260" {
		t.Errorf("array.example is %s, the transport's first IPv4 address is 10.0.2.10", doctor[0])
	}
}
