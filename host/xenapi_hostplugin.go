package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// HostPluginDir is where xapi looks for host plugins (xen-api
// ocaml/xapi/xapi_globs.ml, xapi_plugins_root); HostPluginName is
// sanvol's there, a link to the same binary.
const (
	HostPluginDir  = "/etc/xapi.d/plugins"
	HostPluginName = "sanvol"
)

// nullRef is XenAPI's empty reference.
const nullRef = "OpaqueRef:NULL"

// hostPluginTimeout bounds one host.call_plugin: xapi puts no deadline on
// the plugin it forks (xapi_plugins.ml call_plugin runs
// Forkhelpers.execute_command_get_output without ?timeout), so the
// caller's is the only one. sanvol's plugin functions return within
// seconds (a merge is waited for in bounded calls).
const hostPluginTimeout = 3 * time.Minute

// ActiveHost returns the uuid of the host where the VDI of SR srUUID
// whose location is key is attached to a running VM, or "" if none is.
// xapi records an SMAPIv3 volume's key as the VDI's location
// (ocaml/xapi-storage-script/main.ml vdi_of_volume, ocaml/xapi/xapi_sr.ml
// update_vdis); a VBD is currently_attached while xenopsd has it plugged
// or active (ocaml/xapi/xapi_xenops.ml update_vbd), and its VM's
// resident_on is the host that runs it. A VDI attached on two hosts at
// once (a sharable one), or to a VM that is migrating, is refused (Busy):
// sanvol cannot switch two stacks.
func (x *XenAPI) ActiveHost(ctx context.Context, srUUID, key string) (string, error) {
	op := "find the host where volume " + key + " is active"
	get, logout, err := x.getter(ctx, op, KindInternal, "")
	if err != nil {
		return "", err
	}
	defer logout()
	var sr string
	if err := get(&sr, "SR.get_by_uuid", srUUID); err != nil {
		return "", err
	}
	// The query language is xen-api's ocaml/database/db_filter_lex.mll.
	var vdis map[string]json.RawMessage
	if err := get(&vdis, "VDI.get_all_records_where", fmt.Sprintf(`field "SR" = %q and field "location" = %q`, sr, key)); err != nil {
		return "", err
	}
	var hosts []string
	for ref := range vdis {
		var vbds map[string]struct {
			VM       string `json:"VM"`
			Attached bool   `json:"currently_attached"`
		}
		if err := get(&vbds, "VBD.get_all_records_where", fmt.Sprintf(`field "VDI" = %q`, ref)); err != nil {
			return "", err
		}
		for _, b := range vbds {
			if !b.Attached {
				continue
			}
			// A VM being migrated runs on one host and is attached on
			// another (the destination attaches early): no host is
			// "the" active one until the migration completes, when
			// resident_on moves (xapi_vm_migrate.ml
			// pool_migrate_complete). message_forwarding.ml marks the
			// VM with the operation meanwhile (with_vm_operation
			// ~op:`pool_migrate or `migrate_send).
			var ops map[string]string
			if err := get(&ops, "VM.get_current_operations", b.VM); err != nil {
				return "", err
			}
			for _, o := range ops {
				if o == "pool_migrate" || o == "migrate_send" {
					return "", NewError(KindBusy, op, "the VM it is attached to is migrating between hosts",
						"retry once the migration is over", nil)
				}
			}
			var h string
			if err := get(&h, "VM.get_resident_on", b.VM); err != nil {
				return "", err
			}
			if h == "" || h == nullRef || slices.Contains(hosts, h) {
				continue
			}
			hosts = append(hosts, h)
		}
	}
	switch len(hosts) {
	case 0:
		return "", nil
	case 1:
		var u string
		err := get(&u, "host.get_uuid", hosts[0])
		return u, err
	}
	return "", NewError(KindBusy, op, fmt.Sprintf("VMs on %d hosts have it attached", len(hosts)),
		"sanvol snapshots a volume attached on one host only; detach it from the other VMs", nil)
}

// CallPlugin runs function fn of host plugin name on the host hostUUID
// (XenAPI host.call_plugin; message_forwarding.ml Host.call_plugin sends
// it to that host's xapi, which forks the plugin: xapi_plugins.ml
// call_plugin) and returns its string result. A failure the plugin
// reports comes back as a *XenAPIError with the plugin's code and
// params; a host that does not answer (HOST_OFFLINE,
// CANNOT_CONTACT_HOST, or no answer in time) is KindUnreachable.
func (x *XenAPI) CallPlugin(ctx context.Context, hostUUID, name, fn string, args map[string]string) (string, error) {
	op := fmt.Sprintf("host plugin %s.%s on host %s", name, fn, hostUUID)
	s, err := x.Login(ctx)
	if err != nil {
		return "", NewError(KindUnreachable, op, "cannot log in to xapi", "check that xapi is running on this host", err)
	}
	defer s.Logout(ctx)
	res, err := s.Call(ctx, "host.get_by_uuid", hostUUID)
	if err != nil {
		return "", NewError(KindNotFound, op, "no such host", "", err)
	}
	var ref string
	if err := json.Unmarshal(res, &ref); err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, hostPluginTimeout)
	defer cancel()
	res, err = s.x.callWith(cctx, x.slow, "host.call_plugin", s.ref, ref, name, fn, args)
	var xe *XenAPIError
	switch {
	case errors.As(err, &xe) && slices.Contains([]string{"HOST_OFFLINE", "CANNOT_CONTACT_HOST", "HOST_STILL_BOOTING", "HOST_IS_SLAVE"}, xe.Code):
		return "", NewError(KindUnreachable, op, "the host does not answer", "check that the host is up (xe host-list params=uuid,enabled,host-metrics-live)", err)
	case errors.As(err, &xe):
		return "", err
	case err != nil:
		return "", NewError(KindUnreachable, op, "no answer", "check that the host is up and its xapi runs", err)
	}
	var out string
	if err := json.Unmarshal(res, &out); err != nil {
		return "", fmt.Errorf("%s: unexpected answer %s: %w", op, res, err)
	}
	return out, nil
}

// slowClient is the client for calls that may take minutes (a host
// plugin's): the same socket, the caller's deadline.
func slowClient(c *http.Client) *http.Client {
	return &http.Client{Transport: c.Transport}
}

// PoolMaster returns the uuid of the pool's master as this host's xapi
// knows it (XenAPI pool.get_all, pool.get_master): the host a member
// forwards its metadata-writing calls to (plugin/forward.go). A member's
// xapi answers from the master's database (its local socket forwards
// the call to the master: ocaml/xapi/api_server.ml, callback1), so the
// answer is the master xapi runs on now, which may already differ from
// pool.conf during a designate_new_master.
func (x *XenAPI) PoolMaster(ctx context.Context) (string, error) {
	const op = "find the pool master"
	get, logout, err := x.getter(ctx, op, KindUnreachable, "check that the pool master's xapi answers (xe host-list)")
	if err != nil {
		return "", err
	}
	defer logout()
	var pools []string
	if err := get(&pools, "pool.get_all"); err != nil {
		return "", err
	}
	if len(pools) != 1 {
		return "", NewError(KindInternal, op, fmt.Sprintf("xapi lists %d pools", len(pools)), "", nil)
	}
	var ref, uuid string
	if err := get(&ref, "pool.get_master", pools[0]); err != nil {
		return "", err
	}
	if err := get(&uuid, "host.get_uuid", ref); err != nil {
		return "", err
	}
	return uuid, nil
}

// getter logs in to xapi for op and returns a call that decodes a
// method's result into out, and the logout. A call that fails is an
// error of kind with fix; an answer that does not decode is plain.
func (x *XenAPI) getter(ctx context.Context, op string, kind Kind, fix string) (func(out any, method string, params ...any) error, func(), error) {
	s, err := x.Login(ctx)
	if err != nil {
		return nil, nil, NewError(KindUnreachable, op, "cannot log in to xapi", "check that xapi is running on this host", err)
	}
	get := func(out any, method string, params ...any) error {
		res, err := s.Call(ctx, method, params...)
		if err != nil {
			return NewError(kind, op, "XenAPI "+method+" failed", fix, err)
		}
		if err := json.Unmarshal(res, out); err != nil {
			return fmt.Errorf("%s: %s: unexpected answer: %w", op, method, err)
		}
		return nil
	}
	return get, func() { s.Logout(ctx) }, nil
}
