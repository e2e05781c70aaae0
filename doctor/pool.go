package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/sanvol/sanvol/host"
)

// PoolHost is what the uniqueness checks need of a pool host.
type PoolHost struct {
	UUID    string
	Name    string
	Address string
	// IQN is the host's iSCSI initiator name as xapi records it.
	IQN string
	// HostNQN is the NVMe host NQN recorded in other-config (xapi has no
	// field of its own for it).
	HostNQN string
}

func (h PoolHost) String() string {
	if h.Name != "" {
		return fmt.Sprintf("%s (%s)", h.Name, h.UUID)
	}
	return h.UUID
}

// Pool reads the pool's hosts.
type Pool interface {
	Hosts(ctx context.Context) ([]PoolHost, error)
	// RecordHostNQN stores a host's NVMe host NQN in its record.
	RecordHostNQN(ctx context.Context, hostUUID, nqn string) error
}

// otherConfigHostNQN is the host other-config key the doctor records the
// NVMe host NQN under, beside xapi's own other-config:iscsi_iqn.
const otherConfigHostNQN = "hostnqn"

// XenAPIPool is the production Pool: xapi over its local socket.
type XenAPIPool struct {
	x    *host.XenAPI
	root host.Root
}

// NewXenAPIPool returns a Pool backed by xapi.
func NewXenAPIPool(x *host.XenAPI, root host.Root) *XenAPIPool {
	return &XenAPIPool{x: x, root: root}
}

// Hosts reads every host record of the pool in one call.
func (p *XenAPIPool) Hosts(ctx context.Context) ([]PoolHost, error) {
	if !p.root.Exists(host.XapiSocket) {
		return nil, fmt.Errorf("no xapi socket at %s (not an XCP-ng host, or xapi is not running)", host.XapiSocket)
	}
	s, err := p.x.Login(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Logout(ctx)
	raw, err := s.Call(ctx, "host.get_all_records")
	if err != nil {
		return nil, err
	}
	var recs map[string]struct {
		UUID        string            `json:"uuid"`
		NameLabel   string            `json:"name_label"`
		Address     string            `json:"address"`
		ISCSIIQN    string            `json:"iscsi_iqn"`
		OtherConfig map[string]string `json:"other_config"`
	}
	if err := json.Unmarshal(raw, &recs); err != nil {
		return nil, fmt.Errorf("host.get_all_records: unexpected answer: %w", err)
	}
	var out []PoolHost
	for _, r := range recs {
		iqn := r.ISCSIIQN
		// Before xapi had the field, the IQN lived in other-config only.
		if iqn == "" {
			iqn = r.OtherConfig["iscsi_iqn"]
		}
		out = append(out, PoolHost{UUID: r.UUID, Name: r.NameLabel, Address: r.Address, IQN: iqn, HostNQN: r.OtherConfig[otherConfigHostNQN]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out, nil
}

// RecordHostNQN replaces the host's other-config:hostnqn.
func (p *XenAPIPool) RecordHostNQN(ctx context.Context, hostUUID, nqn string) error {
	s, err := p.x.Login(ctx)
	if err != nil {
		return err
	}
	defer s.Logout(ctx)
	raw, err := s.Call(ctx, "host.get_by_uuid", hostUUID)
	if err != nil {
		return err
	}
	var ref string
	if err := json.Unmarshal(raw, &ref); err != nil {
		return err
	}
	// add_to_other_config fails on an existing key.
	if _, err := s.Call(ctx, "host.remove_from_other_config", ref, otherConfigHostNQN); err != nil {
		return err
	}
	_, err = s.Call(ctx, "host.add_to_other_config", ref, otherConfigHostNQN, nqn)
	return err
}

// poolHosts reads the pool, or adds the WARN that says why it cannot:
// uniqueness that was not checked is never a PASS.
func (r *run) poolHosts(ctx context.Context, check string) ([]PoolHost, string, bool) {
	self := readInventory(r.d.Root)["INSTALLATION_UUID"]
	fail := func(why string) ([]PoolHost, string, bool) {
		r.add(result(check, "pool", Warn, "cannot check pool-wide uniqueness: "+why, nil,
			"run sanvol doctor on a pool host where xapi answers (systemctl status xapi; xe host-list)"))
		return nil, "", false
	}
	if r.d.Pool == nil {
		return fail("no XenAPI access")
	}
	if self == "" {
		return fail("this host's XenAPI uuid is unknown (no INSTALLATION_UUID in " + inventoryPath + ")")
	}
	hosts, err := r.d.Pool.Hosts(ctx)
	if err != nil {
		return fail(err.Error())
	}
	if findHost(hosts, self) == nil {
		return fail("this host (" + self + ") is not among the pool's hosts")
	}
	return hosts, self, true
}

func findHost(hosts []PoolHost, uuid string) *PoolHost {
	for i := range hosts {
		if hosts[i].UUID == uuid {
			return &hosts[i]
		}
	}
	return nil
}

// uniqueInPool compares this host's identity (what) with the other
// hosts' recorded ones.
func (r *run) uniqueInPool(check, what, local string, hosts []PoolHost, self string, get func(PoolHost) string, ev []string, dupFix, unknownFix string) {
	var dups, unknown []string
	for _, h := range hosts {
		if h.UUID == self {
			continue
		}
		v := get(h)
		ev = append(ev, fmt.Sprintf("%s: %s", h, orNone(v)))
		switch {
		case v == "":
			unknown = append(unknown, h.String())
		case v == local:
			dups = append(dups, h.String())
		}
	}
	switch {
	case len(dups) > 0:
		r.add(result(check, "pool", Fail, fmt.Sprintf("%s %s is also used by %s: the array cannot tell the hosts apart, and writes through one can corrupt the other's view", what, local, strings.Join(dups, ", ")), ev, dupFix))
	case len(unknown) > 0:
		r.add(result(check, "pool", Warn, fmt.Sprintf("cannot check pool-wide uniqueness against %s: no %s recorded", strings.Join(unknown, ", "), what), ev, unknownFix))
	default:
		r.add(result(check, "pool", Pass, fmt.Sprintf("%s %s is unique among the pool's %d hosts", what, local, len(hosts)), ev, ""))
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none recorded)"
	}
	return s
}
