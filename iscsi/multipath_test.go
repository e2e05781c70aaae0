package iscsi

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDropInContent(t *testing.T) {
	f := newFakeHost(t)
	tr := f.transport(nil)
	ctx := context.Background()
	if _, err := tr.setStanza(ctx, testWWID, &mpStanza{wwid: testWWID, noPathRetry: "12"}); err != nil {
		t.Fatal(err)
	}
	changed, err := tr.setStanza(ctx, otherWWID, &mpStanza{wwid: otherWWID, noPathRetry: "fail"})
	if err != nil || !changed {
		t.Fatalf("second stanza: changed %v, %v", changed, err)
	}
	want := dropInHeader + `multipaths {
	multipath {
		wwid 36001405a1b2c3d4e5f60718293a4b5c6
		alias 36001405a1b2c3d4e5f60718293a4b5c6
		no_path_retry 12
	}
	multipath {
		wwid 36001405ffffffffffffffffffffffff0
		alias 36001405ffffffffffffffffffffffff0
		no_path_retry fail
	}
}
`
	got := f.read(DropInPath) + "\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("drop-in (-want +got):\n%s", diff)
	}
	// The file holds only multipaths stanzas: no defaults, devices or
	// blacklist section that would change XCP-ng's own configuration.
	for _, section := range []string{"defaults", "devices", "blacklist", "overrides"} {
		if containsLine(got, section) {
			t.Errorf("drop-in has a %s section", section)
		}
	}

	// The same setting again changes nothing, so no reconfigure follows.
	if changed, _ := tr.setStanza(ctx, testWWID, &mpStanza{wwid: testWWID, noPathRetry: "12"}); changed {
		t.Error("unchanged stanza reported as a change")
	}
	if changed, _ := tr.setStanza(ctx, testWWID, nil); !changed {
		t.Error("removal not reported")
	}
	if _, ok := parseDropIn(f.read(DropInPath))[testWWID]; ok {
		t.Error("stanza still there after removal")
	}
	if changed, _ := tr.setStanza(ctx, otherWWID, nil); !changed {
		t.Error("last removal not reported")
	}
	if f.root.Exists(DropInPath) {
		t.Error("empty drop-in left behind")
	}
}

func containsLine(text, word string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, word) {
			return true
		}
	}
	return false
}

func TestNoPathRetry(t *testing.T) {
	cases := []struct {
		seconds, interval int
		want              string
	}{
		{0, 5, "fail"},
		{60, 5, "12"},
		{61, 5, "13"},
		{1, 5, "1"},
		{30, 0, "6"}, // unknown interval: multipathd's default of 5 s
		{30, 10, "3"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%d s every %d s", c.seconds, c.interval), func(t *testing.T) {
			if got := noPathRetry(c.seconds, c.interval); got != c.want {
				t.Errorf("noPathRetry(%d, %d) = %s, want %s", c.seconds, c.interval, got, c.want)
			}
		})
	}
}

func TestParseMultipathStatus(t *testing.T) {
	cases := []struct {
		name, line string
		want       []dmPathState
	}{
		{
			// service-time: two status values per path; the second
			// path failed once and is down.
			"service-time, one group",
			"0 2097152 multipath 2 0 0 0 1 1 A 0 2 2 8:16 A 0 0 1 8:32 F 1 0 1",
			[]dmPathState{{dev: "8:16", active: true}, {dev: "8:32", active: false, fails: 1}},
		},
		{
			// round-robin with two groups (ALUA optimised and not),
			// and a hardware handler argument.
			"round-robin, two groups",
			"0 2097152 multipath 2 1 0 1 alua 2 1 A 0 1 1 8:0 A 0 0 E 0 1 1 8:16 A 0 0",
			[]dmPathState{{dev: "8:0", active: true}, {dev: "8:16", active: true}},
		},
		{
			"queueing with no path",
			"0 2097152 multipath 2 1 0 0 1 1 E 0 1 2 8:16 F 3 0 1",
			[]dmPathState{{dev: "8:16", fails: 3}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseMultipathStatus(c.line)
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				return
			}
			if diff := cmp.Diff(c.want, got, cmp.AllowUnexported(dmPathState{})); diff != "" {
				t.Errorf("%s (-want +got):\n%s", c.name, diff)
			}
		})
	}
	for _, bad := range []string{"0 100 linear 8:0 0", "0 100 multipath 2 0", "0 100 multipath 0 0 1 1 A 0 2 0 8:0 A"} {
		if _, err := parseMultipathStatus(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
