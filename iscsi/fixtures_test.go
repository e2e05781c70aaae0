package iscsi

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tidwall/gjson"

	"github.com/sanvol/sanvol/host"
)

// These tests read what the lab guest captured (testdata/FIXTURES.txt and
// FIXTURES-transport.txt): sysfs trees of two iSCSI sessions to one LIO
// LUN, healthy and with the path through 127.0.0.2 cut, and the tools'
// own view of the same moment. The transport reads sysfs; the tools'
// outputs are parsed here only to check that sysfs tells the same story.

const (
	fixtureKernel = "6.1.0-50-amd64"
	fixtureIQN    = "iqn.2003-01.lab.sanvol:capture"
	fixtureWWID   = "3600140582c07aa19e296d47921b40c42"
)

func fixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// p3Session is what `iscsiadm -m session -P 3` says of one session.
type p3Session struct {
	target, portal, state, disk, diskState string
}

// parseP3 reads the fields the comparison needs. Per open-iscsi's
// session_info.c, "Target:" is printed only when it changes, so it
// carries over to the next session.
func parseP3(text string) map[int]p3Session {
	out := map[int]p3Session{}
	var cur p3Session
	sid := -1
	diskRE := regexp.MustCompile(`Attached scsi disk (\S+)\s+State: (\S+)`)
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "Target: "):
			cur.target = strings.Fields(l)[1]
		case strings.HasPrefix(l, "Persistent Portal: "):
			cur.portal, _, _ = strings.Cut(strings.TrimPrefix(l, "Persistent Portal: "), ",")
		case strings.HasPrefix(l, "SID: "):
			sid, _ = strconv.Atoi(strings.TrimPrefix(l, "SID: "))
		case strings.HasPrefix(l, "iSCSI Session State: "):
			cur.state = strings.TrimPrefix(l, "iSCSI Session State: ")
		default:
			if m := diskRE.FindStringSubmatch(l); m != nil && sid >= 0 {
				cur.disk, cur.diskState = m[1], m[2]
				out[sid] = cur
			}
		}
	}
	return out
}

func TestSysfsFixturesMatchIscsiadm(t *testing.T) {
	for _, sfx := range []string{"", "-degraded"} {
		sys := sysfs{root: host.NewRoot("testdata/sysfs-" + fixtureKernel + sfx)}
		sessions, err := sys.sessions()
		if err != nil {
			t.Fatal(err)
		}
		p3 := parseP3(fixture(t, "iscsiadm-session-P3-2.1.8"+sfx+".txt"))
		if len(sessions) != 2 || len(p3) != 2 {
			t.Fatalf("%s: sysfs has %d sessions, iscsiadm %d", sfx, len(sessions), len(p3))
		}
		for _, s := range sessions {
			want, ok := p3[s.sid]
			if !ok {
				t.Errorf("%s: session %d not in iscsiadm's list", sfx, s.sid)
				continue
			}
			got := p3Session{target: s.target, portal: s.portal.String(), state: s.state}
			if len(s.disks) == 1 {
				got.disk, got.diskState = s.disks[0].name, s.disks[0].state
			}
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(p3Session{})); diff != "" {
				t.Errorf("%s: session %d (-iscsiadm +sysfs):\n%s", sfx, s.sid, diff)
			}
			if s.iface != defaultIface || s.recoveryTmo != 5 || s.host != s.sid-1 {
				t.Errorf("%s: session %d iface %q recovery_tmo %d host %d", sfx, s.sid, s.iface, s.recoveryTmo, s.host)
			}
			for _, d := range s.disks {
				if d.wwid != fixtureWWID || d.vendor != "LIO-ORG" || d.size != 256<<20 || d.lun != 0 {
					t.Errorf("%s: disk %+v", sfx, d)
				}
			}
		}
	}
}

// llPath is one path line of `multipath -ll`.
var llPathRE = regexp.MustCompile(`(\d+:\d+:\d+:\d+)\s+(sd\w+)\s+(\d+:\d+)\s+(active|failed)\s+(\S+)\s+(\S+)`)

func TestMapFixturesMatchMultipath(t *testing.T) {
	for _, sfx := range []string{"", "-degraded"} {
		sys := sysfs{root: host.NewRoot("testdata/sysfs-" + fixtureKernel + sfx)}
		m, err := sys.findMap(fixtureWWID, nil)
		if err != nil || m == nil {
			t.Fatalf("%s: map %v %v", sfx, m, err)
		}
		ll := fixture(t, "multipath-ll-0.9.4"+sfx+".txt")
		if !strings.HasPrefix(ll, fixtureWWID+" "+m.dev+" ") {
			t.Errorf("%s: multipath -ll names another map: %q", sfx, strings.SplitN(ll, "\n", 2)[0])
		}
		var llDevs []string
		for _, p := range llPathRE.FindAllStringSubmatch(ll, -1) {
			llDevs = append(llDevs, p[2])
			d, err := sys.disk(p[2], p[1])
			if err != nil || d.dev != p[3] {
				t.Errorf("%s: %s is %s in multipath -ll, sysfs says %q (%v)", sfx, p[2], p[3], d.dev, err)
			}
		}
		slices.Sort(llDevs)
		if !cmp.Equal(llDevs, m.slaves) || m.name != fixtureWWID || m.size != 256<<20 {
			t.Errorf("%s: sysfs map %+v, multipath -ll paths %v", sfx, m, llDevs)
		}
		// multipathd calls the WWID "uuid" in its JSON (docs/lab-pitfalls.md
		// §12); it is the map sanvol found.
		js := fixture(t, "multipathd-show-maps-json-0.9.4"+sfx+".json")
		if got := gjson.Get(js, `maps.#(uuid=="`+fixtureWWID+`").sysfs`).String(); got != m.dev {
			t.Errorf("%s: multipathd JSON has the map on %q, sysfs on %s", sfx, got, m.dev)
		}
	}
}

// TestHealthOfDegradedFixture judges the captured degraded state the way
// SR.stat would, and checks the verdict against multipath's.
func TestHealthOfDegradedFixture(t *testing.T) {
	root := host.NewRoot("testdata/sysfs-" + fixtureKernel + "-degraded")
	sys := sysfs{root: root}
	sessions, _ := sys.sessions()
	m, _ := sys.findMap(fixtureWWID, nil)
	paths := []path{
		{Portal: Portal{"127.0.0.1", 3260}, IQN: fixtureIQN, Iface: defaultIface},
		{Portal: Portal{"127.0.0.2", 3260}, IQN: fixtureIQN, Iface: defaultIface},
	}
	var down []string
	for _, p := range paths {
		if why := pathProblem(p, sessions, fixtureWWID, m, nil); why != "" {
			down = append(down, p.String()+" ("+why+")")
		}
	}
	want := []string{"127.0.0.2:3260 (sdb failed: session FREE, disk transport-offline)"}
	if diff := cmp.Diff(want, down); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, p := range llPathRE.FindAllStringSubmatch(fixture(t, "multipath-ll-0.9.4-degraded.txt"), -1) {
		if failed := p[4] == "failed"; failed != (p[2] == "sdb") {
			t.Errorf("multipath -ll says %s is %s", p[2], p[4])
		}
	}
}

func TestDmsetupStatusFixtures(t *testing.T) {
	cases := []struct {
		file string
		want []dmPathState
	}{
		{"dmsetup-status-" + fixtureKernel + ".txt", []dmPathState{{dev: "8:16", active: true}, {dev: "8:0", active: true}}},
		{"dmsetup-status-" + fixtureKernel + "-degraded.txt", []dmPathState{{dev: "8:16", active: true}, {dev: "8:0", active: true}}},
		{"synthetic-dmsetup-status-4.19-round-robin.txt", []dmPathState{{dev: "8:0", active: true}, {dev: "8:16", fails: 1}}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			got, err := parseMultipathStatus(strings.TrimSpace(fixture(t, c.file)))
			if err != nil {
				t.Errorf("%s: %v", c.file, err)
				return
			}
			if diff := cmp.Diff(c.want, got, cmp.AllowUnexported(dmPathState{})); diff != "" {
				t.Errorf("%s (-want +got):\n%s", c.file, diff)
			}
		})
	}
	table := fixture(t, "dmsetup-table-"+fixtureKernel+".txt")
	if !strings.Contains(table, " multipath 1 queue_if_no_path ") {
		t.Errorf("the captured map does not queue: %s", table)
	}
}

func TestDiscoveryAndConfigFixtures(t *testing.T) {
	want := []record{
		{portal: Portal{"127.0.0.1", 3260}, tpgt: 1, iqn: fixtureIQN},
		{portal: Portal{"127.0.0.2", 3260}, tpgt: 2, iqn: fixtureIQN},
	}
	if diff := cmp.Diff(want, parseRecords(fixture(t, "iscsiadm-discovery-st-2.1.8.txt")), cmp.AllowUnexported(record{})); diff != "" {
		t.Errorf("discovery (-want +got):\n%s", diff)
	}
	m := pollingRE.FindStringSubmatch(fixture(t, "multipathd-show-config-0.9.4.txt"))
	if m == nil || m[1] != "5" {
		t.Errorf("polling_interval from show config: %v", m)
	}
}
