package host

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// pbdRecord is the part of a XenAPI PBD record sanvol reads.
type pbdRecord struct {
	UUID         string            `json:"uuid"`
	Host         string            `json:"host"`
	SR           string            `json:"SR"`
	DeviceConfig map[string]string `json:"device_config"`
}

// SeparatePBDSecrets gives each PBD of the SR its own copy of every
// "*password_secret" it shares with another PBD, and returns the uuids of
// the PBDs it changed.
//
// Why: xapi gives each PBD its own secret (xapi_pbd.ml, create_common →
// xapi_secret.ml, duplicate_passwds), but xapi_sr.ml (create) then writes
// the configuration SR.create returned into every PBD with
// Db.PBD.set_device_config, and xapi-storage-script hands that
// configuration back unmerged (main.ml, sr_create_impl). SR.create can
// only return one map, so after `xe sr-create` every PBD names the
// master's secret, and PBD.destroy of any one host (pool-eject) destroys
// it for all (xapi_pbd.ml, destroy → xapi_secret.ml, clean_out_passwds).
//
// It is run on the pool master only, at SR.attach, so that one process in
// the pool decides: the PBD on the master keeps the shared secret (so the
// original is never orphaned), every other PBD of this SR naming it gets a
// fresh secret with the same value (secret.create), written with
// PBD.set_device_config, the call xapi reserves for storage plugins. A
// host's running plug keeps working: the original secret stays. Values
// never leave the XenAPI session: they are not logged and never on a
// command line.
func (x *XenAPI) SeparatePBDSecrets(ctx context.Context, srUUID string) ([]string, error) {
	s, err := x.Login(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Logout(ctx)
	var srRef string
	if err := s.decode(ctx, &srRef, "SR.get_by_uuid", srUUID); err != nil {
		return nil, err
	}
	var master string
	var pools []string
	if err := s.decode(ctx, &pools, "pool.get_all"); err != nil {
		return nil, err
	}
	if len(pools) == 1 {
		if err := s.decode(ctx, &master, "pool.get_master", pools[0]); err != nil {
			return nil, err
		}
	}
	var all map[string]pbdRecord
	if err := s.decode(ctx, &all, "PBD.get_all_records"); err != nil {
		return nil, err
	}
	// Who names each secret, over every PBD of the pool.
	users := map[string][]string{}
	for ref, p := range all {
		for k, v := range p.DeviceConfig {
			if strings.HasSuffix(k, "password_secret") {
				users[v] = append(users[v], ref)
			}
		}
	}
	var changed []string
	for _, secret := range slices.Sorted(maps.Keys(users)) {
		sharers := users[secret]
		if len(sharers) < 2 {
			continue
		}
		keeper := keeperOf(sharers, all, master)
		for _, ref := range sharers {
			p := all[ref]
			if ref == keeper || p.SR != srRef {
				continue
			}
			fresh, err := s.copySecret(ctx, secret)
			if err != nil {
				return changed, err
			}
			cfg := make(map[string]string, len(p.DeviceConfig))
			for k, v := range p.DeviceConfig {
				if strings.HasSuffix(k, "password_secret") && v == secret {
					v = fresh
				}
				cfg[k] = v
			}
			if _, err := s.Call(ctx, "PBD.set_device_config", ref, cfg); err != nil {
				return changed, fmt.Errorf("PBD %s: set_device_config: %w", p.UUID, err)
			}
			p.DeviceConfig = cfg
			all[ref] = p
			changed = append(changed, p.UUID)
		}
	}
	sort.Strings(changed)
	return changed, nil
}

// keeperOf picks the PBD that keeps a shared secret: the pool master's,
// else the first by reference, so that the choice is stable.
func keeperOf(sharers []string, all map[string]pbdRecord, master string) string {
	s := append([]string(nil), sharers...)
	sort.Strings(s)
	for _, ref := range s {
		if all[ref].Host == master {
			return ref
		}
	}
	return s[0]
}

// copySecret makes a new secret holding the value of the one named.
func (s *Session) copySecret(ctx context.Context, uuid string) (string, error) {
	var ref, value, fresh, freshUUID string
	if err := s.decode(ctx, &ref, "secret.get_by_uuid", uuid); err != nil {
		return "", err
	}
	if err := s.decode(ctx, &value, "secret.get_value", ref); err != nil {
		return "", err
	}
	if err := s.decode(ctx, &fresh, "secret.create", map[string]any{"value": value, "other_config": map[string]string{}}); err != nil {
		return "", err
	}
	if err := s.decode(ctx, &freshUUID, "secret.get_uuid", fresh); err != nil {
		return "", err
	}
	return freshUUID, nil
}

// decode calls a method and decodes its result into out.
func (s *Session) decode(ctx context.Context, out any, method string, params ...any) error {
	res, err := s.Call(ctx, method, params...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(res, out); err != nil {
		return fmt.Errorf("XenAPI %s: %w", method, err)
	}
	return nil
}
