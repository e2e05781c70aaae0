package lvm

import (
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// WithDMStatus makes LV and LVs read this host's activation state from
// the kernel through dm instead of `lvs`'s lv_attr: the metadata comes
// from LVMeta and LVsMeta (the report cache's, with WithReportCache) and
// the state from one DM_DEV_STATUS per LV, so that a call whose metadata
// is unchanged starts no lvm process. lvm2 builds lv_attr's state and
// open characters from that same device-mapper info (lvm2
// lib/activate/dev_manager.c, _info; lib/metadata/lv.c,
// lv_attr_dup_with_info_and_seg_status). When dm cannot answer (no
// device-mapper on the host) or a device is not the LV's, they run `lvs`
// as without it.
func (c *Client) WithDMStatus(dm host.DMStatusReader) *Client {
	c.dm = dm
	return c
}

// DMName is the device-mapper name LVM gives an LV: VG and LV joined by
// one dash, every dash inside either doubled (libdm
// libdm-string.c, dm_build_dm_name).
func DMName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// withDM sets DM on each LV from the kernel; false means the state could
// not be read that way, and the caller runs `lvs`.
//
// lvm2 finds an LV's device by its device-mapper uuid, "LVM-" and the VG
// and LV uuids without dashes (dev_manager.c, _info), not by name: a
// device of the LV's name whose uuid is not the LV's (left over from an
// LV of the same name removed elsewhere, or made by hand) is not this
// LV's, and lvs would say so in its own way; such a rare case is left to
// lvs.
func (c *Client) withDM(lvs []LV) bool {
	if len(lvs) == 0 {
		return true
	}
	names := make([]string, len(lvs))
	for i, l := range lvs {
		names[i] = DMName(l.VG, l.Name)
	}
	infos, err := c.dm.DMStatus(names...)
	if err == nil && len(infos) != len(lvs) {
		err = fmt.Errorf("%d device-mapper states for %d LVs", len(infos), len(lvs))
	}
	if err != nil {
		c.log.Debug("no device-mapper state; running lvs", zap.Error(err))
		return false
	}
	for i := range lvs {
		info := infos[i]
		id := strings.ReplaceAll(lvs[i].UUID, "-", "")
		if info.Exists && (id == "" || !strings.HasPrefix(info.UUID, "LVM-") || !strings.HasSuffix(info.UUID, id)) {
			c.log.Debug("device-mapper device of the LV's name is not the LV's; running lvs",
				zap.String("device", names[i]), zap.String("uuid", info.UUID), zap.String("lv_uuid", lvs[i].UUID))
			return false
		}
		lvs[i].Attr = ""
		lvs[i].DM = &info
	}
	return true
}
