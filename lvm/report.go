package lvm

import (
	"context"
	"fmt"
	"strconv"

	"github.com/tidwall/gjson"

	"github.com/sanvol/sanvol/host"
)

// VG is one row of `vgs`.
type VG struct {
	Name       string
	UUID       string
	Size       int64
	Free       int64
	ExtentSize int64
	Tags       []string
	MDASize    int64 // smallest metadata area of the VG
	MDAFree    int64 // free space in it
	LVCount    int
	PVCount    int
}

// LV is one row of `lvs`.
type LV struct {
	Name string
	VG   string
	UUID string
	Size int64
	Tags []string
	// Attr is lv_attr, e.g. "-wi-a-----": the fifth character is 'a'
	// when the LV is active on this host, the sixth 'o' when it is open.
	Attr string
	// DM, when set, is the LV's device-mapper device on this host as
	// the kernel reports it (Client.WithDMStatus); Attr is then empty
	// and Active, Open and Live read this instead.
	DM *host.DMInfo
}

// Active reports whether the LV has a device-mapper device on this host.
// lv_attr's state is 'a' only when the kernel's table matches the
// metadata; an LV resized on another host shows 'X' (lvm2 2.03.16, seen in
// the lab), a suspended one 's', and so on: all of them are active, and
// only '-' (and 'h', a removed LV's history) mean no device. lvm2 prints
// '-' exactly when the kernel has no device for the LV (lvm2
// lib/metadata/lv.c, lv_attr_dup_with_info_and_seg_status: every other
// state is under info.exists), which is what DM says.
func (l LV) Active() bool {
	if l.DM != nil {
		return l.DM.Exists
	}
	return len(l.Attr) > 4 && l.Attr[4] != '-' && l.Attr[4] != 'h'
}

// Open reports whether something holds the LV's device open on this host:
// lv_attr's 'o' is the kernel's open count above zero (the same lvm2
// function). lvm2 2.03 prints 'X' there too when it cannot match the
// table to the metadata (an LV resized on another host): that LV reads
// as not open from lv_attr, and as what the kernel says from DM.
func (l LV) Open() bool {
	if l.DM != nil {
		return l.DM.Exists && l.DM.OpenCount > 0
	}
	return len(l.Attr) > 5 && l.Attr[5] == 'o'
}

// Live reports whether the LV's device runs a live table and is not
// suspended: lv_attr state 'a' (lvm2's info.live_table, not
// info.suspended). lvm2 2.03's 'X' for a table that differs from the
// metadata has no counterpart in DM: a caller that cares whether the
// device is the metadata's compares its size (datapath.current).
func (l LV) Live() bool {
	if l.DM != nil {
		return l.DM.Exists && l.DM.LiveTable && !l.DM.Suspended
	}
	return len(l.Attr) > 4 && l.Attr[4] == 'a'
}

// PV is one row of `pvs`, with the tags of its VG (empty for an orphan).
type PV struct {
	Name    string
	VG      string
	UUID    string
	Size    int64
	MDASize int64
	VGTags  []string
}

// The report fields sanvol asks for. All exist in lvm2 2.02.180 and 2.03.
const (
	VGFields = "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_tags,vg_mda_size,vg_mda_free,lv_count,pv_count"
	LVFields = LVMetaFields + ",lv_attr"
	// LVMetaFields are the LV fields read from the VG metadata alone:
	// LVFields without lv_attr, whose activation state is this host's
	// device-mapper's.
	LVMetaFields = "lv_name,vg_name,lv_uuid,lv_size,lv_tags"
	PVFields     = "pv_name,vg_name,pv_uuid,pv_size,pv_mda_size,vg_tags"
)

// reportArgs are common to every report: JSON with every value a string of
// bytes and no unit suffix.
func reportArgs(fields string) []string {
	return []string{"--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields}
}

// rows returns the rows of the named section of an LVM JSON report:
// {"report":[{"vg":[{...},...]}]}.
func rows(out []byte, section string) ([]gjson.Result, error) {
	if !gjson.ValidBytes(out) {
		return nil, fmt.Errorf("LVM report is not JSON: %.200q", out)
	}
	var rs []gjson.Result
	for _, r := range gjson.GetBytes(out, "report").Array() {
		rs = append(rs, r.Get(section).Array()...)
	}
	return rs, nil
}

// num parses a numeric report value; LVM prints "" for values that do not
// apply (e.g. pv_mda_size of a device without metadata area).
func num(r gjson.Result, field string) (int64, error) {
	s := r.Get(field).String()
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("report field %s=%q is not a number", field, s)
	}
	return n, nil
}

type numField struct {
	name string
	dst  *int64
}

func nums(r gjson.Result, fs ...numField) error {
	for _, f := range fs {
		n, err := num(r, f.name)
		if err != nil {
			return err
		}
		*f.dst = n
	}
	return nil
}

// ParseVGs decodes a `vgs` JSON report asked with the VG fields.
func ParseVGs(out []byte) ([]VG, error) {
	rs, err := rows(out, "vg")
	if err != nil {
		return nil, err
	}
	vgs := make([]VG, 0, len(rs))
	for _, r := range rs {
		v := VG{Name: r.Get("vg_name").String(), UUID: r.Get("vg_uuid").String(), Tags: SplitTags(r.Get("vg_tags").String())}
		var lvc, pvc int64
		if err := nums(r, numField{"vg_size", &v.Size}, numField{"vg_free", &v.Free}, numField{"vg_extent_size", &v.ExtentSize},
			numField{"vg_mda_size", &v.MDASize}, numField{"vg_mda_free", &v.MDAFree}, numField{"lv_count", &lvc}, numField{"pv_count", &pvc}); err != nil {
			return nil, err
		}
		v.LVCount, v.PVCount = int(lvc), int(pvc)
		vgs = append(vgs, v)
	}
	return vgs, nil
}

// ParseLVs decodes an `lvs` JSON report asked with the LV fields.
func ParseLVs(out []byte) ([]LV, error) {
	rs, err := rows(out, "lv")
	if err != nil {
		return nil, err
	}
	lvs := make([]LV, 0, len(rs))
	for _, r := range rs {
		l := LV{Name: r.Get("lv_name").String(), VG: r.Get("vg_name").String(), UUID: r.Get("lv_uuid").String(),
			Tags: SplitTags(r.Get("lv_tags").String()), Attr: r.Get("lv_attr").String()}
		if err := nums(r, numField{"lv_size", &l.Size}); err != nil {
			return nil, err
		}
		lvs = append(lvs, l)
	}
	return lvs, nil
}

// ParsePVs decodes a `pvs` JSON report asked with the PV fields.
func ParsePVs(out []byte) ([]PV, error) {
	rs, err := rows(out, "pv")
	if err != nil {
		return nil, err
	}
	pvs := make([]PV, 0, len(rs))
	for _, r := range rs {
		p := PV{Name: r.Get("pv_name").String(), VG: r.Get("vg_name").String(), UUID: r.Get("pv_uuid").String(),
			VGTags: SplitTags(r.Get("vg_tags").String())}
		if err := nums(r, numField{"pv_size", &p.Size}, numField{"pv_mda_size", &p.MDASize}); err != nil {
			return nil, err
		}
		pvs = append(pvs, p)
	}
	return pvs, nil
}

func badReport(op string, err error) error {
	return host.NewError(host.KindInternal, op, "unexpected LVM report", "report this as a sanvol bug with `lvm version`", err)
}

// VGs lists the VGs on the scope's devices (all of them if names is
// empty), in one `vgs` process, or none when the report cache holds it:
// every VG field is read from the metadata.
func (c *Client) VGs(ctx context.Context, s Scope, names ...string) ([]VG, error) {
	out, err := c.metaReport(ctx, s, "vgs", append(reportArgs(VGFields), names...)...)
	if err != nil {
		return nil, err
	}
	vgs, err := ParseVGs(out)
	if err != nil {
		return nil, badReport("lvm vgs", err)
	}
	return vgs, nil
}

// LVs lists every LV of a VG in one `lvs` process, whatever their number;
// with WithDMStatus, LVsMeta (no process while the metadata is unchanged)
// and the kernel's state of each LV.
func (c *Client) LVs(ctx context.Context, s Scope, vg string) ([]LV, error) {
	if c.dm != nil {
		lvs, err := c.LVsMeta(ctx, s, vg)
		if err != nil {
			return nil, err
		}
		if c.withDM(lvs) {
			return lvs, nil
		}
	}
	out, err := c.exec(ctx, s, report, "lvs", append(reportArgs(LVFields), vg)...)
	if err != nil {
		return nil, err
	}
	lvs, err := ParseLVs(out)
	if err != nil {
		return nil, badReport("lvm lvs", err)
	}
	return lvs, nil
}

// LVsMeta is LVs without activation state (Attr is empty: Active and Open
// are false), for callers that need only what the metadata says: it is
// answered from the report cache while the metadata is unchanged.
func (c *Client) LVsMeta(ctx context.Context, s Scope, vg string) ([]LV, error) {
	out, err := c.metaReport(ctx, s, "lvs", append(reportArgs(LVMetaFields), vg)...)
	if err != nil {
		return nil, err
	}
	lvs, err := ParseLVs(out)
	if err != nil {
		return nil, badReport("lvm lvs", err)
	}
	for i := range lvs {
		lvs[i].Attr = ""
	}
	return lvs, nil
}

// LV reads one LV. A missing LV is a host.KindNotFound error. With
// WithDMStatus it is LVMeta (no process while the metadata is unchanged)
// and the kernel's state of the LV.
func (c *Client) LV(ctx context.Context, s Scope, vg, lv string) (LV, error) {
	if c.dm != nil {
		l, err := c.LVMeta(ctx, s, vg, lv)
		if err != nil {
			return LV{}, err
		}
		if ls := []LV{l}; c.withDM(ls) {
			return ls[0], nil
		}
	}
	out, err := c.exec(ctx, s, report, "lvs", append(reportArgs(LVFields), vg+"/"+lv)...)
	if err != nil {
		return LV{}, err
	}
	return oneLV(out, vg, lv)
}

// LVMeta is LV without activation state (Attr is empty: Active and Open
// are false), for callers that need only what the metadata says: it is
// answered from the report cache while the metadata is unchanged.
func (c *Client) LVMeta(ctx context.Context, s Scope, vg, lv string) (LV, error) {
	out, err := c.metaReport(ctx, s, "lvs", append(reportArgs(LVMetaFields), vg+"/"+lv)...)
	if err != nil {
		return LV{}, err
	}
	l, err := oneLV(out, vg, lv)
	l.Attr = ""
	return l, err
}

// oneLV picks lv out of a report of vg/lv.
func oneLV(out []byte, vg, lv string) (LV, error) {
	lvs, err := ParseLVs(out)
	if err != nil {
		return LV{}, badReport("lvm lvs", err)
	}
	for _, l := range lvs {
		if l.Name == lv {
			return l, nil
		}
	}
	// lvm2 2.02 can exit 0 with an empty report for a missing LV.
	return LV{}, host.NewError(host.KindNotFound, "lvm lvs "+vg+"/"+lv, "not found", "", nil)
}

// PVs lists the PVs on the scope's devices with their VG's tags.
func (c *Client) PVs(ctx context.Context, s Scope) ([]PV, error) {
	out, err := c.exec(ctx, s, report, "pvs", reportArgs(PVFields)...)
	if err != nil {
		return nil, err
	}
	pvs, err := ParsePVs(out)
	if err != nil {
		return nil, badReport("lvm pvs", err)
	}
	return pvs, nil
}
