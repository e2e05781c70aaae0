package host

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// SMAPIv1SR is a SMAPIv1 iSCSI SR of the pool (sm's lvmoiscsi or iscsi
// type) that names a given target IQN in a PBD's device-config.
type SMAPIv1SR struct {
	UUID, Name, Type string
	// PBDs is how many of its PBDs (one per host) name the IQN.
	PBDs int
}

func (s SMAPIv1SR) String() string {
	return fmt.Sprintf("%s (%s, type %s, %d PBD(s))", s.UUID, s.Name, s.Type, s.PBDs)
}

// SMAPIv1SRTypes are sm's SR types that log in to iSCSI targets: sm's
// drivers/LVHDoISCSISR.py (lvmoiscsi) and drivers/RawISCSISR.py (iscsi,
// whose detach also deletes the IQN's node records).
var SMAPIv1SRTypes = []string{"lvmoiscsi", "iscsi"}

// SMAPIv1SRs lists the pool's SMAPIv1 iSCSI SRs on a target IQN; the
// iSCSI transport refuses SR.create next to one, the doctor reports one.
type SMAPIv1SRs interface {
	SMAPIv1ISCSISRsOn(ctx context.Context, iqn string) ([]SMAPIv1SR, error)
}

// SMAPIv1ISCSISRsOn reads, pool-wide, every SR of sm's iSCSI types and
// their PBDs, and returns those whose PBD device-config:targetIQN is iqn
// (iSCSI names compare case-insensitively, RFC 3720 §3.2.6.1). The PBDs
// are read, not sm's /var/run/sr-ref files, so an SR unplugged on this
// host, or plugged on other hosts only, counts too: sm logs out every
// session to the IQN on each host where it detaches its last SR of that
// IQN (drivers/BaseISCSI.py detach_and_delete -> iscsilib.logout with
// all=True). A targetIQN of "*" (sm logs in to every IQN the portal
// offers) is not matched here.
func (x *XenAPI) SMAPIv1ISCSISRsOn(ctx context.Context, iqn string) ([]SMAPIv1SR, error) {
	const op = "list the pool's SMAPIv1 iSCSI SRs"
	s, err := x.Login(ctx)
	if err != nil {
		return nil, NewError(KindUnreachable, op, "cannot log in to xapi", "check that xapi is running on this host", err)
	}
	defer s.Logout(ctx)
	var out []SMAPIv1SR
	for _, typ := range SMAPIv1SRTypes {
		// The query language is xen-api's ocaml/database/db_filter_lex.mll.
		res, err := s.Call(ctx, "SR.get_all_records_where", fmt.Sprintf(`field "type" = %q`, typ))
		if err != nil {
			return nil, NewError(KindInternal, op, "cannot read the SR records", "", err)
		}
		var srs map[string]struct {
			UUID string `json:"uuid"`
			Name string `json:"name_label"`
		}
		if err := json.Unmarshal(res, &srs); err != nil {
			return nil, fmt.Errorf("%s: SR.get_all_records_where: unexpected answer: %w", op, err)
		}
		for ref, sr := range srs {
			res, err := s.Call(ctx, "PBD.get_all_records_where", fmt.Sprintf(`field "SR" = %q`, ref))
			if err != nil {
				return nil, NewError(KindInternal, op, "cannot read the PBD records of SR "+sr.UUID, "", err)
			}
			var pbds map[string]struct {
				DeviceConfig map[string]string `json:"device_config"`
			}
			if err := json.Unmarshal(res, &pbds); err != nil {
				return nil, fmt.Errorf("%s: PBD.get_all_records_where: unexpected answer: %w", op, err)
			}
			n := 0
			for _, p := range pbds {
				if strings.EqualFold(strings.TrimSpace(p.DeviceConfig["targetIQN"]), iqn) {
					n++
				}
			}
			if n > 0 {
				out = append(out, SMAPIv1SR{UUID: sr.UUID, Name: sr.Name, Type: typ, PBDs: n})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out, nil
}
