package host

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// PBDRecords is the part of xapi that the plugin publishes path counts
// through, asks which daemon it runs with, and gives each PBD its own
// secrets through.
type PBDRecords interface {
	// UpdatePBDOtherConfig makes this host's PBD of the SR carry the
	// values in set and none of the keys in remove.
	UpdatePBDOtherConfig(ctx context.Context, srUUID string, set map[string]string, remove []string) error
	// XapiVersion is this host's xapi version, major and minor, from
	// host.software_version.
	XapiVersion(ctx context.Context) (major, minor int, err error)
	// SeparatePBDSecrets gives each PBD of the SR its own copy of every
	// shared secret and returns the PBDs it changed (see *XenAPI's).
	SeparatePBDSecrets(ctx context.Context, srUUID string) ([]string, error)
}

// localHost logs in and finds this host's record: INSTALLATION_UUID of
// the inventory, as xapi itself (helpers.ml get_localhost) and sm
// (util.get_localhost_ref) find it.
func (x *XenAPI) localHost(ctx context.Context, op string) (*Session, string, error) {
	uuid := ReadInventory(x.root)["INSTALLATION_UUID"]
	if uuid == "" {
		return nil, "", NewError(KindNotFound, op, "no INSTALLATION_UUID in "+InventoryPath,
			"this is not an XCP-ng host, or its inventory is damaged", nil)
	}
	s, err := x.Login(ctx)
	if err != nil {
		return nil, "", NewError(KindUnreachable, op, "cannot log in to xapi", "check that xapi is running on this host", err)
	}
	ref, err := s.callRef(ctx, "host.get_by_uuid", uuid)
	if err != nil {
		s.Logout(ctx)
		return nil, "", NewError(KindNotFound, op, "xapi has no host "+uuid+" (INSTALLATION_UUID of "+InventoryPath+")", "", err)
	}
	return s, ref, nil
}

// ref calls a method that answers one string (a reference).
func (s *Session) callRef(ctx context.Context, method string, params ...any) (string, error) {
	res, err := s.Call(ctx, method, params...)
	if err != nil {
		return "", err
	}
	var ref string
	if err := json.Unmarshal(res, &ref); err != nil {
		return "", fmt.Errorf("XenAPI %s: unexpected answer %s", method, res)
	}
	return ref, nil
}

// UpdatePBDOtherConfig finds the PBD joining this host and the SR in one
// PBD.get_all_records_where and changes only the keys that differ. xapi's
// add_to_other_config fails with MAP_DUPLICATE_KEY on a key that exists
// (ocaml/database/db_cache_types.ml add_to_map), so a changed value is
// removed first, as sm's mpathcount.py update_config does.
func (x *XenAPI) UpdatePBDOtherConfig(ctx context.Context, srUUID string, set map[string]string, remove []string) error {
	op := "update PBD other-config of SR " + srUUID
	s, hostRef, err := x.localHost(ctx, op)
	if err != nil {
		return err
	}
	defer s.Logout(ctx)
	srRef, err := s.callRef(ctx, "SR.get_by_uuid", srUUID)
	if err != nil {
		return NewError(KindNotFound, op, "xapi has no SR "+srUUID, "", err)
	}
	// The query language is xen-api's ocaml/database/db_filter_lex.mll.
	expr := fmt.Sprintf(`field "host" = %q and field "SR" = %q`, hostRef, srRef)
	res, err := s.Call(ctx, "PBD.get_all_records_where", expr)
	if err != nil {
		return NewError(KindInternal, op, "cannot read the PBD records", "", err)
	}
	var recs map[string]struct {
		OtherConfig map[string]string `json:"other_config"`
	}
	if err := json.Unmarshal(res, &recs); err != nil {
		return fmt.Errorf("%s: PBD.get_all_records_where: unexpected answer: %w", op, err)
	}
	if len(recs) != 1 {
		return NewError(KindNotFound, op, fmt.Sprintf("xapi has %d PBDs of this SR for this host, want 1", len(recs)), "", nil)
	}
	for pbd, rec := range recs {
		for _, k := range remove {
			if _, ok := rec.OtherConfig[k]; !ok {
				continue
			}
			if _, err := s.Call(ctx, "PBD.remove_from_other_config", pbd, k); err != nil {
				return err
			}
		}
		for k, v := range set {
			old, ok := rec.OtherConfig[k]
			if ok && old == v {
				continue
			}
			if ok {
				if _, err := s.Call(ctx, "PBD.remove_from_other_config", pbd, k); err != nil {
					return err
				}
			}
			if _, err := s.Call(ctx, "PBD.add_to_other_config", pbd, k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// XapiVersion reads software_version["xapi"], "<major>.<minor>" (xen-api
// ocaml/xapi/xapi_globs.ml software_version; XCP-ng 8.2's xapi 1.249
// writes "1.249", XCP-ng 8.3's "26.1"). xapi-storage-script is built from
// the same tree and package, so this is also the daemon's version.
func (x *XenAPI) XapiVersion(ctx context.Context) (int, int, error) {
	const op = "read xapi's version"
	s, hostRef, err := x.localHost(ctx, op)
	if err != nil {
		return 0, 0, err
	}
	defer s.Logout(ctx)
	res, err := s.Call(ctx, "host.get_software_version", hostRef)
	if err != nil {
		return 0, 0, err
	}
	var sv map[string]string
	if err := json.Unmarshal(res, &sv); err != nil {
		return 0, 0, fmt.Errorf("%s: host.get_software_version: unexpected answer: %w", op, err)
	}
	return ParseXapiVersion(sv["xapi"])
}

// ParseXapiVersion parses "<major>.<minor>[.…]".
func ParseXapiVersion(v string) (int, int, error) {
	f := strings.SplitN(v, ".", 3)
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("xapi version %q is not <major>.<minor>", v)
	}
	major, err1 := strconv.Atoi(f[0])
	minor, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("xapi version %q is not <major>.<minor>", v)
	}
	return major, minor, nil
}
