package volume_test

import (
	"context"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// secretTransport answers a probe the way the iscsi-ng transport did: it
// copies the caller's device-config, secrets included, into each result.
type secretTransport struct{ fakeTransport }

func (s *secretTransport) Probe(ctx context.Context, cfg map[string]string, inspect transport.Inspector) ([]transport.Candidate, error) {
	conf := map[string]string{}
	for k, v := range cfg {
		conf[k] = v
	}
	return []transport.Candidate{{Configuration: conf, Extra: map[string]string{"chappassword": "x", "targetIQN": "iqn.2003-01.org.x:y"}}}, nil
}

// SR.probe results never carry a password or a secret in any key (#12 §4,
// #13): xe and XO print them, and SR.create can copy them into every PBD.
func TestProbeCarriesNoSecret(t *testing.T) {
	v := newEnv(t, host.Role{Master: true})
	e, err := volume.New(volume.Options{
		LVM: lvm.New(v.sim, nil), Transport: &secretTransport{}, Runner: v.sim, Locker: host.FileLocker{Root: v.root}, Root: v.root,
		Role: host.Role{Master: true}, Version: "test-1.0",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]string{"target": "10.0.0.1", "chapuser": "u", "chappassword": "plain", "chappassword_secret": "uuid-1",
		"incoming_chappassword_secret": "uuid-2", "dhchap-password": "DHHC-1:00:abc:", "dhchap-ctrl-password_secret": "uuid-3", "CHAPPassword": "x"}
	res, err := e.SRProbe(context.Background(), cfg)
	if err != nil || len(res) != 1 {
		t.Fatalf("probe = %+v, %v", res, err)
	}
	for _, m := range []map[string]string{res[0].Configuration, res[0].ExtraInfo} {
		for k, val := range m {
			lk := strings.ToLower(k)
			if strings.Contains(lk, "password") || strings.Contains(lk, "secret") || strings.HasPrefix(val, "uuid-") || val == "plain" {
				t.Errorf("probe result carries %s=%s", k, val)
			}
		}
	}
	if res[0].Configuration["chapuser"] != "u" || res[0].Configuration["target"] != "10.0.0.1" || res[0].ExtraInfo["targetIQN"] == "" {
		t.Errorf("probe dropped more than secrets: %+v", res[0])
	}
}
