package iscsi

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	fpath "path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
)

// Session states as the kernel's iSCSI transport class prints them in
// /sys/class/iscsi_session/sessionN/state.
const (
	sessionLoggedIn = "LOGGED_IN"
	sessionFailed   = "FAILED"
)

// sysfsFix is the advice for a sysfs read that fails, which only happens
// when /sys is not what the kernel normally offers.
const sysfsFix = "check that /sys is mounted and readable; collect Plugin.diagnostics and report it"

// session is one iSCSI session as sysfs shows it.
type session struct {
	sid         int
	target      string
	portal      Portal
	tpgt        int
	iface       string
	state       string
	host        int // SCSI host number (hostH)
	recoveryTmo int
	disks       []disk
}

// disk is one SCSI disk (one path to one LUN) under a session.
type disk struct {
	name    string // sdX
	hctl    string // H:C:T:L
	lun     int
	wwid    string // normalised as multipath names it
	state   string // running, blocked, transport-offline, offline…
	vendor  string
	model   string
	size    int64 // bytes
	holders []string
	dev     string // major:minor
}

// dmMap is one device-mapper multipath map.
type dmMap struct {
	dev       string // dm-N
	name      string
	wwid      string // from dm/uuid "mpath-<wwid>"
	slaves    []string
	holders   []string
	size      int64
	suspended bool
}

// sysfs reads the kernel's view through host.Root.
type sysfs struct {
	root host.Root
}

var (
	sessionDirRE = regexp.MustCompile(`^session(\d+)$`)
	hostDirRE    = regexp.MustCompile(`^host(\d+)$`)
	hctlRE       = regexp.MustCompile(`^(\d+):(\d+):(\d+):(\d+)$`)
)

// sessions lists every iSCSI session on the host, with its disks.
func (s sysfs) sessions() ([]session, error) {
	entries, err := s.root.ReadDir("/sys/class/iscsi_session")
	if errors.Is(err, fs.ErrNotExist) {
		// The iscsi transport class is not loaded: no session can exist.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list /sys/class/iscsi_session: %w", err)
	}
	var out []session
	for _, e := range entries {
		m := sessionDirRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		sid, _ := strconv.Atoi(m[1])
		se, err := s.session(sid)
		if err != nil {
			// A session torn down while we look is not an error.
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		out = append(out, se)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].sid < out[j].sid })
	return out, nil
}

func (s sysfs) session(sid int) (session, error) {
	base := fmt.Sprintf("/sys/class/iscsi_session/session%d", sid)
	se := session{sid: sid}
	var err error
	if se.target, err = s.root.ReadString(base + "/targetname"); err != nil {
		return se, err
	}
	se.state, _ = s.root.ReadString(base + "/state")
	se.iface, _ = s.root.ReadString(base + "/ifacename")
	se.tpgt = s.readInt(base + "/tpgt")
	se.recoveryTmo = s.readInt(base + "/recovery_tmo")

	conns, _ := s.root.Glob(fmt.Sprintf("/sys/class/iscsi_connection/connection%d:*", sid))
	sort.Strings(conns)
	if len(conns) > 0 {
		addr, _ := s.root.ReadString(conns[0] + "/persistent_address")
		port := s.readInt(conns[0] + "/persistent_port")
		if addr == "" {
			addr, _ = s.root.ReadString(conns[0] + "/address")
			port = s.readInt(conns[0] + "/port")
		}
		se.portal = Portal{Addr: canonicalAddr(addr), Port: port}
	}

	// The session's device sits under its SCSI host:
	// /sys/devices/platform/hostH/sessionN.
	dev, err := s.root.EvalSymlinks(base + "/device")
	if err != nil {
		return se, err
	}
	if m := hostDirRE.FindStringSubmatch(fpath.Base(fpath.Dir(dev))); m != nil {
		se.host, _ = strconv.Atoi(m[1])
	}
	blocks, _ := s.root.Glob(dev + "/target*/*:*:*:*/block/*")
	sort.Strings(blocks)
	for _, b := range blocks {
		d, err := s.disk(fpath.Base(b), fpath.Base(fpath.Dir(fpath.Dir(b))))
		if err != nil {
			continue
		}
		se.disks = append(se.disks, d)
	}
	return se, nil
}

// disk reads one SCSI disk by its block name.
func (s sysfs) disk(name, hctl string) (disk, error) {
	d := disk{name: name, hctl: hctl}
	if m := hctlRE.FindStringSubmatch(hctl); m != nil {
		d.lun, _ = strconv.Atoi(m[4])
	}
	base := "/sys/block/" + name
	if !s.root.Exists(base) {
		return d, fs.ErrNotExist
	}
	raw, _ := s.root.ReadString(base + "/device/wwid")
	d.wwid = normaliseWWID(raw)
	d.state, _ = s.root.ReadString(base + "/device/state")
	d.vendor, _ = s.root.ReadString(base + "/device/vendor")
	d.model, _ = s.root.ReadString(base + "/device/model")
	d.size = blockdev.Size(s.root, name)
	d.holders = blockdev.Holders(s.root, name)
	d.dev, _ = s.root.ReadString(base + "/dev")
	return d, nil
}

// maps lists every dm-multipath map.
func (s sysfs) maps() ([]dmMap, error) {
	devs, err := blockdev.DMDevices(s.root)
	if err != nil {
		return nil, err
	}
	var out []dmMap
	for _, d := range devs {
		wwid, ok := strings.CutPrefix(d.UUID, "mpath-")
		if !ok {
			continue
		}
		out = append(out, dmMap{dev: d.Dev, name: d.Name, wwid: wwid, suspended: d.Suspended,
			slaves: d.Slaves, holders: d.Holders, size: d.Size})
	}
	return out, nil
}

// findMap returns the map of a LUN: by its WWID, or, when the map's WWID
// is spelled differently (T10 and name-string identifiers), by one of the
// LUN's disks being its slave.
func (s sysfs) findMap(wwid string, disks []disk) (*dmMap, error) {
	maps, err := s.maps()
	if err != nil {
		return nil, err
	}
	for i := range maps {
		if maps[i].wwid == wwid {
			return &maps[i], nil
		}
	}
	for i := range maps {
		for _, d := range disks {
			if slices.Contains(maps[i].slaves, d.name) {
				return &maps[i], nil
			}
		}
	}
	return nil, nil
}

// scsiHostScan asks a SCSI host to scan for LUNs; "- - -" means every
// channel, target and LUN of that host, which for iSCSI is one session.
func (s sysfs) scanHost(hostNo int) error {
	return s.root.WriteFile(fmt.Sprintf("/sys/class/scsi_host/host%d/scan", hostNo), []byte("- - -"), 0o200)
}

func (s sysfs) rescanDisk(name string) error {
	return s.root.WriteFile("/sys/block/"+name+"/device/rescan", []byte("1"), 0o200)
}

func (s sysfs) deleteDisk(name string) error {
	err := s.root.WriteFile("/sys/block/"+name+"/device/delete", []byte("1"), 0o200)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (s sysfs) readInt(p string) int {
	v, _ := s.root.ReadString(p)
	n, _ := strconv.Atoi(v)
	return n
}

// canonicalAddr gives an address the spelling Portal uses, so that sysfs,
// discovery output and the device-config compare equal.
func canonicalAddr(a string) string {
	a = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(a), "["), "]")
	if ip, err := netip.ParseAddr(a); err == nil {
		return ip.Unmap().String()
	}
	return a
}
