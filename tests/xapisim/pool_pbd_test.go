package xapisim

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sanvol/sanvol/host"
)

// echoPlugin's SR.create hands back the configuration it was given plus
// sr_uuid, as sanvol's does (the request's configuration is a flat object
// of strings, so sed can cut it out).
const echoPlugin = `#!/bin/sh
req=$(cat)
case $(basename "$0") in
Plugin.Query) echo '{"plugin":"echo","name":"e","description":"","vendor":"","copyright":"","version":"1.0","required_api_version":"5.0","features":[],"configuration":{},"required_cluster_stack":[]}' ;;
SR.create) printf '%s\n' "$req" | sed -n 's/.*"configuration":{\([^}]*\)}.*/{"sr_uuid":"u",\1}/p' ;;
*) echo null ;;
esac
`

func poolWithSR(t *testing.T) (*Pool, string, *host.XenAPI) {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "volume", "org.xen.xapi.storage.echo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "echo.sh")
	if err := os.WriteFile(bin, []byte(echoPlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"Plugin.Query", "SR.create"} {
		if err := os.Symlink(bin, filepath.Join(dir, m)); err != nil {
			t.Fatal(err)
		}
	}
	pool := NewPool(New(root, nil), 3)
	sr, err := pool.SRCreate(context.Background(), "echo", "pool SR", map[string]string{"target": "10.0.1.5", "chapuser": "u", "chappassword": "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	xroot := filepath.Join(root, "xapi-root")
	stop, err := pool.ServeXenAPI(filepath.Join(xroot, host.XapiSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return pool, sr, host.NewXenAPI(host.NewRoot(xroot))
}

// TestSRCreateLeavesOneSecretForAllPBDs reproduces xapi: each PBD gets
// its own secret, then SR.create's answer overwrites them all with the
// master's; ejecting any host then loses the secret for everyone.
func TestSRCreateLeavesOneSecretForAllPBDs(t *testing.T) {
	pool, sr, _ := poolWithSR(t)
	m, h2, h3 := pool.Hosts[0], pool.Hosts[1], pool.Hosts[2]
	shared := pool.SecretsOf(sr, m)
	if len(shared) != 1 || !slices.Equal(shared, pool.SecretsOf(sr, h2)) || !slices.Equal(shared, pool.SecretsOf(sr, h3)) {
		t.Fatalf("secrets master %v, h2 %v, h3 %v: xapi writes SR.create's configuration into every PBD", shared, pool.SecretsOf(sr, h2), pool.SecretsOf(sr, h3))
	}
	if err := pool.PBDDestroy(sr, h2); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.DeviceConfigFor(sr, h3); err == nil {
		t.Fatal("host 3's plug still finds its secret after host 2's PBD.destroy; the simulator does not clean out secrets as xapi does")
	}
}

// TestMasterAttachSeparatesSecretsSoEjectKeepsOthersPlugging: what
// sanvol's SR.attach does on the pool master (SeparatePBDSecrets), then
// host 2 leaves the pool, and the master and host 3 still plug.
func TestMasterAttachSeparatesSecretsSoEjectKeepsOthersPlugging(t *testing.T) {
	pool, sr, x := poolWithSR(t)
	ctx := context.Background()
	m, h2, h3 := pool.Hosts[0], pool.Hosts[1], pool.Hosts[2]
	original := pool.SecretsOf(sr, m)
	changed, err := x.SeparatePBDSecrets(ctx, sr)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 2 {
		t.Fatalf("changed %v, want the two members' PBDs", changed)
	}
	if !slices.Equal(original, pool.SecretsOf(sr, m)) {
		t.Fatalf("the master's PBD lost the original secret: %v", pool.SecretsOf(sr, m))
	}
	seen := map[string]bool{}
	for _, h := range pool.Hosts {
		s := pool.SecretsOf(sr, h)
		if len(s) != 1 || seen[s[0]] {
			t.Fatalf("host %s secrets %v: still shared", h, s)
		}
		seen[s[0]] = true
	}
	if again, err := x.SeparatePBDSecrets(ctx, sr); err != nil || len(again) != 0 {
		t.Fatalf("second pass: %v %v", again, err)
	}
	if err := pool.PBDDestroy(sr, h2); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{m, h3} {
		cfg, err := pool.DeviceConfigFor(sr, h)
		if err != nil {
			t.Fatalf("after host 2 left: %v", err)
		}
		if cfg["chappassword"] != "s3cret" || cfg["target"] != "10.0.1.5" || cfg["sr_uuid"] != "u" {
			t.Fatalf("host %s device-config %v", h, cfg)
		}
		// And through XenAPI, as the plugin reads it at plug.
		if v, err := x.Secret(ctx, pool.SecretsOf(sr, h)[0]); err != nil || v != "s3cret" {
			t.Fatalf("host %s: %q %v", h, v, err)
		}
	}
}
