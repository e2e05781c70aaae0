package nvme

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sanvol/sanvol/host"
)

func readFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParsePortals(t *testing.T) {
	good := []struct {
		in   string
		want []string
	}{
		{"10.0.0.1", []string{"10.0.0.1:4420"}},
		{"10.0.0.1:4421, 10.0.1.1", []string{"10.0.0.1:4421", "10.0.1.1:4420"}},
		{"fd00::1", []string{"[fd00::1]:4420"}},
		{"[fd00::1]:4430,[fd00::2]", []string{"[fd00::1]:4430", "[fd00::2]:4420"}},
		{"::ffff:10.0.0.1", []string{"10.0.0.1:4420"}},
	}
	for _, c := range good {
		t.Run(c.in, func(t *testing.T) {
			ps, err := parsePortals(c.in, 4420)
			if err != nil {
				t.Errorf("%q: %v", c.in, err)
				return
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("%q (-want +got):\n%s", c.in, diff)
			}
		})
	}
	for _, in := range []string{"", " , ", "array.example.com", "10.0.0.1:0", "10.0.0.1:99999", "0.0.0.0", "10.0.0.1,10.0.0.1:4420", "224.0.0.1"} {
		_, err := parsePortals(in, 4420)
		if !errors.Is(err, host.ErrInvalid) {
			t.Errorf("%q: err = %v, want Invalid", in, err)
		}
	}
}

func TestParseNamespaceID(t *testing.T) {
	cases := []struct {
		in   string
		want NamespaceID
		str  string
	}{
		{"1", NamespaceID{NSID: 1}, "nsid 1"},
		{testUUID, NamespaceID{Hex: strings.ReplaceAll(testUUID, "-", ""), Kind: "uuid|nguid"}, testUUID},
		{"uuid." + testUUID, NamespaceID{Hex: strings.ReplaceAll(testUUID, "-", ""), Kind: "uuid"}, "uuid." + testUUID},
		{"0123456789ABCDEF0123456789abcdef", NamespaceID{Hex: "0123456789abcdef0123456789abcdef", Kind: "nguid"}, "eui.0123456789abcdef0123456789abcdef"},
		{"eui.0123456789abcdef0123456789abcdef", NamespaceID{Hex: "0123456789abcdef0123456789abcdef", Kind: "nguid"}, "eui.0123456789abcdef0123456789abcdef"},
		{"00:25:38:5b:21:80:12:34", NamespaceID{Hex: "0025385b21801234", Kind: "eui64"}, "eui.0025385b21801234"},
		{"eui.0025385b21801234", NamespaceID{Hex: "0025385b21801234", Kind: "eui64"}, "eui.0025385b21801234"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParseNamespaceID(c.in)
			if err != nil {
				t.Errorf("%q: %v", c.in, err)
				return
			}
			if got != c.want || got.String() != c.str {
				t.Errorf("%q = %+v (%s), want %+v (%s)", c.in, got, got, c.want, c.str)
			}
		})
	}
	for _, in := range []string{"0", "4294967295", "-1", "nvme0n1", "00000000-0000-0000-0000-000000000000", "uuid.0025385b21801234", "12345"} {
		if in == "12345" {
			continue // a valid NSID
		}
		if _, err := ParseNamespaceID(in); !errors.Is(err, host.ErrInvalid) {
			t.Errorf("%q: err = %v, want Invalid", in, err)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  map[string]string
		want string
	}{
		{"no nqn", map[string]string{KeyTarget: "10.0.0.1"}, "nqn is missing"},
		{"bad nqn", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: "iqn.2000-01.com.example:x"}, "not a valid NQN"},
		{"no target", map[string]string{KeyNQN: testNQN}, "target is missing"},
		{"bad port", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyPort: "http"}, "port=\"http\""},
		{"bad namespace", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyNamespace: "nvme0n1"}, "namespace=\"nvme0n1\""},
		{"bad iopolicy", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyIOPolicy: "service-time"}, "iopolicy=\"service-time\""},
		{"bad tmo", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyCtrlLossTmo: "-5"}, "ctrl-loss-tmo"},
		{"iface count", map[string]string{KeyTarget: "10.0.0.1,10.0.0.2,10.0.0.3", KeyNQN: testNQN, KeyHostIface: "eth1,eth2"}, "2 interfaces for 3 portals"},
		{"hostid alone", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyHostID: testHostID}, "hostid is set without hostnqn"},
		{"bad hostid", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyHostNQN: testHostNQN, KeyHostID: "xyz"}, "not a UUID"},
		{"bad key", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyDHCHAP: "secret123"}, "DHHC-1"},
		{"ctrl key alone", map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyDHCHAPCtrl: testKey}, "without dhchap-password"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseConfig(context.Background(), c.cfg, parseOpts{needNQN: true, secrets: fakeSecrets{}})
			if !errors.Is(err, host.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: err = %v, want Invalid containing %q", c.name, err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), "secret123") {
				t.Errorf("%s: error echoes the key", c.name)
			}
		})
	}
}

func TestParseConfigDefaultsAndSecrets(t *testing.T) {
	cfg := map[string]string{
		KeyTarget: "10.0.0.1:4421,10.0.1.1", KeyNQN: testNQN, KeyPort: "4430",
		KeyHostIface: "eth1,eth2", KeyKeepAliveTmo: "7", KeyNrIOQueues: "4", KeyIOPolicy: "numa",
		KeyDHCHAP + "_secret": "s-1", KeyDHCHAPCtrl + "_secret": "s-2",
	}
	res := fakeSecrets{"s-1": testKey, "s-2": "DHHC-1:01:Y3RybGtleWN0cmxrZXljdHJsa2V5Y3RybGtleTEyMzQ=:"}
	c, err := parseConfig(context.Background(), cfg, parseOpts{needNQN: true, secrets: res})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Portals: []Portal{
			{Addr: netip.MustParseAddr("10.0.0.1"), Port: 4421, Iface: "eth1", IfaceExplicit: true},
			{Addr: netip.MustParseAddr("10.0.1.1"), Port: 4430, Iface: "eth2", IfaceExplicit: true},
		},
		NQN: testNQN, CtrlLossTmo: 1800, ReconnectDelay: 10, KeepAliveTmo: 7, NrIOQueues: 4, IOPolicy: "numa",
		DHCHAP: testKey, DHCHAPCtrl: res["s-2"],
	}
	if diff := cmp.Diff(want, c, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}

	delete(res, "s-2")
	_, err = parseConfig(context.Background(), cfg, parseOpts{needNQN: true, secrets: res})
	if !errors.Is(err, host.ErrNotFound) || !strings.Contains(err.Error(), "s-2") {
		t.Errorf("missing secret: err = %v, want NotFound naming the secret uuid", err)
	}
	// Detach and health never need the key, and must work when the
	// secret is gone.
	if _, err := parseConfig(context.Background(), cfg, parseOpts{needNQN: true}); err != nil {
		t.Errorf("without resolver: %v", err)
	}
}

func TestConfigKeysDocumentEveryKey(t *testing.T) {
	keys := (&Transport{}).ConfigKeys()
	for _, k := range []string{KeyTarget, KeyPort, KeyDiscoveryPort, KeyNQN, KeyNamespace, KeyHostNQN, KeyHostID, KeyHostIface,
		KeyCtrlLossTmo, KeyReconnectDelay, KeyKeepAliveTmo, KeyNrIOQueues, KeyIOPolicy, KeyDHCHAP, KeyDHCHAPCtrl} {
		if len(keys[k]) < 20 {
			t.Errorf("key %s is not documented: %q", k, keys[k])
		}
	}
}

func TestIdentityGeneratedOnceAndPaired(t *testing.T) {
	k := newFakeKernel(t)
	_ = k.root.Remove(HostNQNFile)
	_ = k.root.Remove(HostIDFile)
	tr := k.transport(nil)
	id, err := tr.identity(context.Background(), Config{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id.HostNQN, uuidNQNPfx) || strings.TrimPrefix(id.HostNQN, uuidNQNPfx) != id.HostID || !isUUID(id.HostID) {
		t.Fatalf("identity = %+v", id)
	}
	if k.read(HostNQNFile) != id.HostNQN || k.read(HostIDFile) != id.HostID {
		t.Fatal("identity not written to /etc/nvme")
	}
	again, err := tr.identity(context.Background(), Config{}, true)
	if err != nil || again != id {
		t.Fatalf("second call = %+v, %v; want the same identity", again, err)
	}

	// A hostnqn from elsewhere (nvme gen-hostnqn) keeps its uuid as hostid.
	_ = k.root.Remove(HostIDFile)
	k.write(HostNQNFile, testHostNQN)
	id, err = tr.identity(context.Background(), Config{}, true)
	if err != nil || id.HostID != testHostID || k.read(HostIDFile) != testHostID {
		t.Fatalf("derived hostid = %+v, %v", id, err)
	}

	// Configured identity wins and touches no file.
	cid, err := tr.identity(context.Background(), Config{HostNQN: "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}, true)
	if err != nil || cid.HostID != "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee" {
		t.Fatalf("configured = %+v, %v", cid, err)
	}
	if _, err := tr.identity(context.Background(), Config{HostNQN: "nqn.2000-01.com.example:host1"}, true); !errors.Is(err, host.ErrInvalid) {
		t.Fatalf("configured non-uuid hostnqn without hostid: err = %v", err)
	}
}

func TestParseDiscovery(t *testing.T) {
	recs, err := ParseDiscovery([]byte(readFixture(t, "synthetic-nvme-discover-1.16.json")))
	if err != nil {
		t.Fatal(err)
	}
	var nvm []string
	for _, r := range recs {
		if r.IsNVMSubsystem() {
			nvm = append(nvm, r.TrType+" "+r.TrAddr+":"+r.TrSvcID+" "+r.SubNQN)
		}
	}
	want := []string{
		"tcp 127.0.0.1:4420 " + testNQN,
		"tcp 127.0.0.2:4420 " + testNQN,
		"rdma 192.168.50.1:4420 nqn.2024-01.org.sanvol:rdma-only",
	}
	if diff := cmp.Diff(want, nvm); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if recs[2].PortID != 2 {
		t.Errorf("portid = %d", recs[2].PortID)
	}
	for _, empty := range []string{"", "{}", `{"genctr":0,"records":[]}`} {
		if recs, err := ParseDiscovery([]byte(empty)); err != nil || len(recs) != 0 {
			t.Errorf("%q: %v, %v", empty, recs, err)
		}
	}
	for _, bad := range []string{"not json", "[1,2]"} {
		if _, err := ParseDiscovery([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseListSubsysShapes(t *testing.T) {
	want := []ListedSubsystem{{
		Name: "nvme-subsys0", NQN: testNQN,
		Paths: []ListedPath{
			{Name: "nvme0", Transport: "tcp", Address: map[string]string{"traddr": "127.0.0.1", "trsvcid": "4420"}, State: "live"},
			{Name: "nvme1", Transport: "tcp", Address: map[string]string{"traddr": "127.0.0.2", "trsvcid": "4420"}, State: "connecting"},
		},
	}, {Name: "nvme-subsys1", NQN: "nqn.2024-01.org.sanvol:no-paths"}}
	got, err := ParseListSubsys([]byte(readFixture(t, "synthetic-nvme-list-subsys-1.16.json")))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("1.16 (-want +got):\n%s", diff)
	}
	// The bare host object some 2.x builds print (gonvme, Trident
	// "Ubuntu" fixtures), with nvme-cli < 2.2.1's space-separated address.
	bare := `{"HostNQN":"` + testHostNQN + `","HostID":"` + testHostID + `","Subsystems":[{"Name":"nvme-subsys0","NQN":"` + testNQN + `",
	  "Paths":[{"Name":"nvme0","Transport":"tcp","Address":"traddr=127.0.0.1 trsvcid=4420 src_addr=127.0.0.1","State":"deleting"}]}]}`
	got, err = ParseListSubsys([]byte(bare))
	if err != nil || len(got) != 1 || got[0].HostNQN != testHostNQN || got[0].Paths[0].Address["trsvcid"] != "4420" || got[0].Paths[0].State != "deleting" {
		t.Errorf("bare object: %+v, %v", got, err)
	}
	for _, empty := range []string{"", "{}", "[]"} {
		if got, err := ParseListSubsys([]byte(empty)); err != nil || len(got) != 0 {
			t.Errorf("%q: %+v, %v", empty, got, err)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]string{
		"nvme version 2.3 (git 2.3)\nlibnvme version 1.3 (git 1.3)\n": "2.3",
		"nvme version 1.16\n": "1.16",
	} {
		if got := parseVersion([]byte(in)); got != want {
			t.Errorf("%q = %q, want %q", in, got, want)
		}
	}
}

func TestParseRealNVMeCLI23Output(t *testing.T) {
	recs, err := ParseDiscovery([]byte(readFixture(t, "nvme-discover-2.3.json")))
	if err != nil {
		t.Fatal(err)
	}
	want := []DiscoveryRecord{
		{TrType: "tcp", AdrFam: "ipv4", SubType: "current discovery subsystem", TrAddr: "127.0.0.1", TrSvcID: "4420", SubNQN: "nqn.2014-08.org.nvmexpress.discovery", PortID: 1},
		{TrType: "tcp", AdrFam: "ipv4", SubType: "nvme subsystem", TrAddr: "127.0.0.1", TrSvcID: "4420", SubNQN: "nqn.2024-01.org.sanvol:explore", PortID: 1},
	}
	if diff := cmp.Diff(want, recs); diff != "" {
		t.Errorf("discovery (-want +got):\n%s", diff)
	}
	if recs[0].IsNVMSubsystem() || !recs[1].IsNVMSubsystem() {
		t.Error("a discovery subsystem entry counts as an NVM subsystem")
	}

	subs, err := ParseListSubsys([]byte(readFixture(t, "nvme-list-subsys-2.3.json")))
	if err != nil {
		t.Fatal(err)
	}
	wantSubs := []ListedSubsystem{{
		HostNQN: "nqn.2014-08.org.nvmexpress:uuid:4254d4f7-ff24-4304-a13e-c493a4d62523",
		Name:    "nvme-subsys0", NQN: "nqn.2024-01.org.sanvol:explore",
		Paths: []ListedPath{
			{Name: "nvme0", Transport: "tcp", State: "live",
				Address: map[string]string{"traddr": "127.0.0.1", "trsvcid": "4420", "host_iface": "lo", "src_addr": "127.0.0.1"}},
			{Name: "nvme1", Transport: "tcp", State: "live",
				Address: map[string]string{"traddr": "127.0.0.2", "trsvcid": "4420", "src_addr": "127.0.0.1"}},
		},
	}}
	if diff := cmp.Diff(wantSubs, subs); diff != "" {
		t.Errorf("list-subsys (-want +got):\n%s", diff)
	}
}

// A secret that cannot be read has the resolver's kind, as in iscsi-ng
// (transport.SecretError): NotFound for a missing one, Unreachable when
// xapi is down.
func TestSecretErrorKind(t *testing.T) {
	cfg := map[string]string{KeyTarget: "10.0.0.1", KeyNQN: testNQN, KeyDHCHAP + "_secret": "nope"}
	_, err := parseConfig(context.Background(), cfg, parseOpts{needNQN: true, secrets: fakeSecrets{}})
	if host.KindOf(err) != host.KindNotFound || !strings.Contains(err.Error(), "dhchap-password_secret") {
		t.Errorf("missing secret: %v", err)
	}
	down := host.NewError(host.KindUnreachable, "resolve secret nope", "xapi is not running", "", nil)
	_, err = parseConfig(context.Background(), cfg, parseOpts{needNQN: true, secrets: failingSecrets{down}})
	if host.KindOf(err) != host.KindUnreachable {
		t.Errorf("xapi down: %v", err)
	}
}

type failingSecrets struct{ err error }

func (s failingSecrets) Secret(context.Context, string) (string, error) { return "", s.err }
