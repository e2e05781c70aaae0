package iscsi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	pathpkg "path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// CHAP secrets never travel on an iscsiadm command line: argv is
// world-readable in /proc/<pid>/cmdline, and `iscsiadm -o update -n
// node.session.auth.password -v <secret>` puts it there for as long as
// iscsiadm runs. open-iscsi has no other way to take a value (no stdin, no
// file option), so sanvol writes the settings into the record file itself,
// the way iscsiadm does: under iscsiadm's own database lock, as "name =
// value" lines, and atomically (a new file, mode 0600, renamed over the
// old one). iscsiadm reads the file at login and passes the record to
// iscsid; the password's length field is recomputed from the password line
// by the parser (idbm_rec_update_param, check_password_param).

// Where open-iscsi keeps its database (usr/idbm.h, usr/initiator.h of
// 2.0.874 and 2.1.x).
const (
	nodeDir      = "/etc/iscsi/nodes"
	sendTargets  = "/etc/iscsi/send_targets"
	stConfigName = "st_config"
)

// idbmLockDirs are LOCK_DIR of open-iscsi 2.0.874 (XCP-ng's 6.2.0.874) and
// of 2.1.x. On both distributions /var/lock is a link to /run/lock, so they
// are one directory; sanvol takes the lock in each distinct one.
var idbmLockDirs = []string{"/var/lock/iscsi", "/run/lock/iscsi"}

// idbmLock takes iscsiadm's database lock: link(lock, lock.write) succeeds
// for one process at a time (idbm_lock in usr/idbm.c). iscsiadm gives up
// waiting after 30 s and then proceeds without the lock; sanvol fails
// instead, because writing a record under a running iscsiadm could lose
// either change.
func (t *Transport) idbmLock(ctx context.Context, op string) (func(), error) {
	var held []string
	unlock := func() {
		for _, w := range held {
			_ = t.root.Remove(w)
		}
	}
	var dirs []string
	for _, dir := range idbmLockDirs {
		real := dir
		if r, err := t.root.EvalSymlinks(dir); err == nil {
			real = r
		} else if r, err := t.root.EvalSymlinks(pathpkg.Dir(dir)); err == nil {
			real = pathpkg.Join(r, pathpkg.Base(dir))
		} else {
			continue // no /var/lock at all: no iscsiadm locks there
		}
		if !slices.Contains(dirs, real) {
			dirs = append(dirs, real)
		}
	}
	if len(dirs) == 0 {
		dirs = idbmLockDirs[len(idbmLockDirs)-1:]
	}
	for _, real := range dirs {
		if err := t.root.MkdirAll(real, 0o755); err != nil {
			unlock()
			return nil, host.NewError(host.KindInternal, op, "cannot create iscsiadm's lock directory "+real, "check that / is writable", err)
		}
		lock, write := real+"/lock", real+"/lock.write"
		if !t.root.Exists(lock) {
			if err := t.root.WriteFile(lock, nil, 0o666); err != nil {
				unlock()
				return nil, host.NewError(host.KindInternal, op, "cannot create iscsiadm's lock file "+lock, "check that / is writable", err)
			}
		}
		wctx, cancel := context.WithTimeout(ctx, t.to.Command)
		err := host.Poll(wctx, 10*time.Millisecond, func(context.Context) (bool, error) {
			err := t.root.Link(lock, write)
			if err == nil {
				held = append(held, write)
				return true, nil
			}
			if !errors.Is(err, fs.ErrExist) {
				return false, host.NewError(host.KindInternal, op, "cannot take iscsiadm's database lock "+write, "check that sanvol runs as root and "+real+" is writable", err)
			}
			return false, nil
		})
		cancel()
		var te *host.TimeoutError
		switch {
		case errors.As(err, &te):
			unlock()
			return nil, host.NewError(host.KindBusy, op, "iscsiadm's database lock "+write+" is held for more than "+t.to.Command.String(),
				"wait for the running iscsiadm to finish (ps -ef | grep iscsiadm); if none runs, the lock is stale: rm "+write, nil)
		case err != nil:
			unlock()
			return nil, err
		}
	}
	return unlock, nil
}

// recordLine splits one line of a record the way idbm_recinfo_config does:
// the name runs to the first blank or '=', the value follows the '='.
func recordLine(line string) (name, value string, ok bool) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", "", false
	}
	i := strings.IndexFunc(line, func(r rune) bool { return r == '=' || r == ' ' || r == '\t' })
	if i <= 0 {
		return "", "", false
	}
	rest := strings.TrimLeft(line[i:], " \t")
	if !strings.HasPrefix(rest, "=") {
		return "", "", false
	}
	return line[:i], strings.TrimSpace(rest[1:]), true
}

func parseRecord(b []byte) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := recordLine(l); ok {
			m[k] = v
		}
	}
	return m
}

// rewriteRecord replaces the settings in drop and set of one record file:
// every line naming one is removed, and set is appended, so the last word
// is sanvol's whatever the file held. Values were checked by checkCHAPValue
// (no newline can add a line). The new file is 0600: it holds secrets.
func (t *Transport) rewriteRecord(file string, drop []string, set [][2]string) error {
	b, err := t.root.ReadFile(file)
	if err != nil {
		return err
	}
	var out []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if k, _, ok := recordLine(l); ok && slices.Contains(drop, k) {
			continue
		}
		out = append(out, l)
	}
	for _, kv := range set {
		out = append(out, kv[0]+" = "+kv[1])
	}
	return t.root.WriteFileAtomic(file, []byte(strings.Join(out, "\n")+"\n"), 0o600)
}

// sameAddr compares an address as a record prints it with a portal's.
func sameAddr(s string, p Portal) bool {
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil && a.Unmap().String() == p.Addr
}

// nodeRecordFiles finds the record files of one path. iscsiadm keeps a
// record as nodes/<iqn>/<addr>,<port>,<tpgt>/<iface>, or, when it was
// made without a tpgt (-o new -p addr:port), as the file
// nodes/<iqn>/<addr>,<port> (idbm_rec_write). The files are recognised by
// what they say, not by their names, which differ between versions.
func (t *Transport) nodeRecordFiles(p path) ([]string, error) {
	if err := checkIQN(p.IQN); err != nil {
		return nil, err
	}
	dir := nodeDir + "/" + p.IQN
	ents, err := t.root.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	iface := p.Iface
	if iface == "" {
		iface = defaultIface
	}
	var out []string
	for _, e := range ents {
		f := dir + "/" + e.Name()
		if e.IsDir() {
			f += "/" + iface
		}
		b, err := t.root.ReadFile(f)
		if err != nil {
			continue
		}
		rec := parseRecord(b)
		ifc := rec["iface.iscsi_ifacename"]
		if ifc == "" {
			ifc = defaultIface
		}
		// A flat record file is the one record of its portal whatever
		// iface asks for it: iscsiadm reads it for every -I
		// (idbm_rec_read, idbm_open_rec_r), so it is this path's too.
		if rec["node.name"] == p.IQN && sameAddr(rec["node.conn[0].address"], p.Portal) &&
			rec["node.conn[0].port"] == strconv.Itoa(p.Portal.Port) && (ifc == iface || !e.IsDir()) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no record file for %s at %s through %s under %s", p.IQN, p.Portal, iface, dir)
	}
	return out, nil
}

// nodeAuthKeys are the settings of a node record that hold CHAP.
var nodeAuthKeys = []string{
	"node.session.auth.authmethod",
	"node.session.auth.username", "node.session.auth.password", "node.session.auth.password_length",
	"node.session.auth.username_in", "node.session.auth.password_in", "node.session.auth.password_in_length",
}

// writeNodeCHAP puts the CHAP settings into a path's node record.
func (t *Transport) writeNodeCHAP(ctx context.Context, op string, c *Config, p path) error {
	set := [][2]string{{"node.session.auth.authmethod", "CHAP"},
		{"node.session.auth.username", c.chap.user}, {"node.session.auth.password", c.chap.password}}
	if c.mutual != nil {
		set = append(set, [2]string{"node.session.auth.username_in", c.mutual.user}, [2]string{"node.session.auth.password_in", c.mutual.password})
	}
	unlock, err := t.idbmLock(ctx, op)
	if err != nil {
		return err
	}
	defer unlock()
	files, err := t.nodeRecordFiles(p)
	if err == nil {
		for _, f := range files {
			if err = t.rewriteRecord(f, nodeAuthKeys, set); err != nil {
				break
			}
		}
	}
	if err != nil {
		return host.NewError(host.KindInternal, op+": node record "+p.String(), "cannot write the CHAP settings into the node record",
			"show the record (iscsiadm "+strings.Join(nodeArgs(p), " ")+") and check "+nodeDir+" is writable", err)
	}
	return nil
}

// discoveryAuthKeys are the settings of a sendtargets record that hold
// discovery CHAP.
var discoveryAuthKeys = []string{
	"discovery.sendtargets.auth.authmethod",
	"discovery.sendtargets.auth.username", "discovery.sendtargets.auth.password", "discovery.sendtargets.auth.password_length",
	"discovery.sendtargets.auth.username_in", "discovery.sendtargets.auth.password_in", "discovery.sendtargets.auth.password_in_length",
}

// discoveryRecordFile finds the sendtargets record of a portal:
// send_targets/<addr>,<port>/st_config (idbm_discovery_write).
func (t *Transport) discoveryRecordFile(p Portal) (string, error) {
	ents, err := t.root.ReadDir(sendTargets)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		f := sendTargets + "/" + e.Name() + "/" + stConfigName
		b, err := t.root.ReadFile(f)
		if err != nil {
			continue
		}
		rec := parseRecord(b)
		if sameAddr(rec["discovery.sendtargets.address"], p) && rec["discovery.sendtargets.port"] == strconv.Itoa(p.Port) {
			return f, nil
		}
	}
	return "", fmt.Errorf("no sendtargets record for %s under %s", p, sendTargets)
}

// setDiscoveryCHAP writes (set != nil) or removes (set == nil, leaving
// authmethod None) the discovery CHAP of a portal's sendtargets record.
func (t *Transport) setDiscoveryCHAP(ctx context.Context, op string, p Portal, set [][2]string) error {
	unlock, err := t.idbmLock(ctx, op)
	if err != nil {
		return err
	}
	defer unlock()
	f, err := t.discoveryRecordFile(p)
	if err == nil {
		if set == nil {
			set = [][2]string{{"discovery.sendtargets.auth.authmethod", "None"}}
		}
		err = t.rewriteRecord(f, discoveryAuthKeys, set)
	}
	if err != nil {
		return host.NewError(host.KindInternal, op+": discovery at "+p.String(), "cannot write the discovery CHAP settings into the sendtargets record",
			"check "+sendTargets+" is writable; show the record with iscsiadm -m discoverydb -t st -p "+p.String(), err)
	}
	return nil
}
