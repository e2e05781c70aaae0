package lvm

import (
	"context"
	"strconv"
	"strings"
)

// DevicePath is where udev (or LVM itself) puts an active LV.
func DevicePath(vg, lv string) string { return "/dev/" + vg + "/" + lv }

// tagArgs expands tags into repeated --addtag/--deltag options.
func tagArgs(opt string, tags []string) []string {
	var a []string
	for _, t := range tags {
		a = append(a, opt, t)
	}
	return a
}

// PVCreate labels a device, with a metadata area of mdaMiB MiB.
func (c *Client) PVCreate(ctx context.Context, s Scope, dev string, mdaMiB int64) error {
	_, err := c.exec(ctx, s, once, "pvcreate", "--metadatasize", strconv.FormatInt(mdaMiB, 10)+"m", dev)
	return err
}

// VGCreate creates a VG on one PV, with all its tags in the same command so
// that the VG never exists without them. extentMiB is the extent size.
func (c *Client) VGCreate(ctx context.Context, s Scope, name, dev string, extentMiB int64, tags []string) error {
	args := append([]string{"--physicalextentsize", strconv.FormatInt(extentMiB, 10) + "m"}, tagArgs("--addtag", tags)...)
	_, err := c.exec(ctx, s, once, "vgcreate", append(args, name, dev)...)
	return err
}

// VGRemove removes an empty VG. Without -y, -qq answers "no" to LVM's
// question about removing LVs, so a VG that still holds an LV is refused
// instead of emptied.
func (c *Client) VGRemove(ctx context.Context, s Scope, vg string) error {
	_, err := c.exec(ctx, s, once, "vgremove", vg)
	return err
}

// PVRemove wipes the LVM label of a device that belongs to no VG.
func (c *Client) PVRemove(ctx context.Context, s Scope, dev string) error {
	_, err := c.exec(ctx, s, once, "pvremove", dev)
	return err
}

// VGChangeTags deletes and adds VG tags in one command (one metadata
// commit), so a crash leaves the old or the new set.
func (c *Client) VGChangeTags(ctx context.Context, s Scope, vg string, del, add []string) error {
	args := append(tagArgs("--deltag", del), tagArgs("--addtag", add)...)
	_, err := c.exec(ctx, s, once, "vgchange", append(args, vg)...)
	return err
}

// LVCreate creates a linear LV of extents extents with all its tags in one
// command. The LV carries LVM's activation-skip flag: hosts' boot-time
// auto-activation (udev `vgchange -aay`) leaves it alone, and only an
// explicit activation with --ignoreactivationskip (Activate) starts it.
// The LV is active on this host when LVCreate returns; signatures are not
// wiped and nothing is zeroed here: the caller zeroes the whole LV.
func (c *Client) LVCreate(ctx context.Context, s Scope, vg, lv string, extents int64, tags []string) error {
	args := []string{"-y", "--name", lv, "--extents", strconv.FormatInt(extents, 10),
		"--setactivationskip", "y", "--ignoreactivationskip", "--activate", "y",
		"--wipesignatures", "n", "--zero", "n"}
	args = append(args, tagArgs("--addtag", tags)...)
	_, err := c.exec(ctx, s, once, "lvcreate", append(args, vg)...)
	return err
}

// LVExtend grows an LV to extents extents.
func (c *Client) LVExtend(ctx context.Context, s Scope, vg, lv string, extents int64) error {
	_, err := c.exec(ctx, s, once, "lvextend", "--extents", strconv.FormatInt(extents, 10), vg+"/"+lv)
	return err
}

// LVRemove removes an LV; -y lets it deactivate an active, unopened LV
// first. An open LV is refused (host.KindBusy).
func (c *Client) LVRemove(ctx context.Context, s Scope, vg, lv string) error {
	_, err := c.exec(ctx, s, once, "lvremove", "-y", vg+"/"+lv)
	return err
}

// LVChangeTags deletes and adds LV tags in one command.
func (c *Client) LVChangeTags(ctx context.Context, s Scope, vg, lv string, del, add []string) error {
	args := append(tagArgs("--deltag", del), tagArgs("--addtag", add)...)
	_, err := c.exec(ctx, s, once, "lvchange", append(args, vg+"/"+lv)...)
	return err
}

// Activate activates an LV on this host, in spite of its activation-skip
// flag. It changes no metadata, so it works on every host.
func (c *Client) Activate(ctx context.Context, s Scope, vg, lv string) error {
	_, err := c.exec(ctx, s, activation, "lvchange", "--activate", "y", "--ignoreactivationskip", vg+"/"+lv)
	return err
}

// Deactivate deactivates an LV on this host.
func (c *Client) Deactivate(ctx context.Context, s Scope, vg, lv string) error {
	_, err := c.exec(ctx, s, activation, "lvchange", "--activate", "n", vg+"/"+lv)
	return err
}

// Refresh reloads an active LV's mapping from the metadata, after the
// master resized it.
func (c *Client) Refresh(ctx context.Context, s Scope, vg, lv string) error {
	_, err := c.exec(ctx, s, activation, "lvchange", "--refresh", vg+"/"+lv)
	return err
}

// IsLVMName reports whether s is a valid VG or LV name (lvm2
// _validate_name): [a-zA-Z0-9+_.-], not starting with '-', at most 127.
func IsLVMName(s string) bool {
	if s == "" || len(s) > 127 || s[0] == '-' || s == "." || s == ".." {
		return false
	}
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_.-") == ""
}

// PVResize grows a PV to its device's current size, after the LUN grew on
// the array.
func (c *Client) PVResize(ctx context.Context, s Scope, dev string) error {
	_, err := c.exec(ctx, s, once, "pvresize", dev)
	return err
}
