package nvme

import (
	"context"
	"errors"
	"io/fs"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// Host identity files, as nvme-cli and nvmf-autoconnect use them.
const (
	HostNQNFile = "/etc/nvme/hostnqn"
	HostIDFile  = "/etc/nvme/hostid"
	uuidNQNPfx  = "nqn.2014-08.org.nvmexpress:uuid:"
)

// Identity is the host NQN and host ID one connect uses.
type Identity struct {
	HostNQN string
	HostID  string
}

// identity returns the configured identity, or this host's default from
// /etc/nvme, generating the files once when absent if create is set (a
// read-only caller gets an empty identity, which matches any path). nvme-cli 2.x refuses
// to connect without them (nvme-cli#1473), and a hostid that does not
// pair with the hostnqn confuses targets (nvme-cli#4040), so the two are
// generated together from one UUID.
func (t *Transport) identity(ctx context.Context, c Config, create bool) (Identity, error) {
	if c.HostNQN != "" {
		id := Identity{HostNQN: c.HostNQN, HostID: c.HostID}
		if id.HostID == "" {
			u, ok := strings.CutPrefix(c.HostNQN, uuidNQNPfx)
			if !ok || !isUUID(strings.ToLower(u)) {
				return Identity{}, invalid("hostnqn is set but hostid is not, and hostnqn does not embed a UUID",
					"also give device-config:hostid=<uuid>, the host ID the target knows for this NQN")
			}
			id.HostID = strings.ToLower(u)
		}
		return id, nil
	}
	const op = "nvmetcp: host identity"
	if !create {
		nqn, _ := t.root.ReadString(HostNQNFile)
		return Identity{HostNQN: nqn}, nil
	}
	unlock, err := transport.Lock(ctx, t.locker, t.to.Lock, op, "nvme-hostnqn", "another sanvol call writing the host NQN files")
	if err != nil {
		return Identity{}, err
	}
	defer unlock()
	nqn, nerr := t.root.ReadString(HostNQNFile)
	hid, herr := t.root.ReadString(HostIDFile)
	if nerr != nil && !errors.Is(nerr, fs.ErrNotExist) {
		return Identity{}, host.NewError(host.KindInternal, op, "cannot read "+HostNQNFile, "", nerr)
	}
	if herr != nil && !errors.Is(herr, fs.ErrNotExist) {
		return Identity{}, host.NewError(host.KindInternal, op, "cannot read "+HostIDFile, "", herr)
	}
	hid = strings.ToLower(hid)
	if nqn != "" {
		if err := checkNQN("hostnqn in "+HostNQNFile, nqn); err != nil {
			return Identity{}, err
		}
	}
	if hid != "" && !isUUID(hid) {
		return Identity{}, host.NewError(host.KindInvalid, op, HostIDFile+" does not hold a UUID",
			"remove "+HostIDFile+" (sanvol regenerates it from the host NQN) or write a UUID into it", nil)
	}
	changed := false
	switch {
	case nqn == "" && hid == "":
		u, err := host.NewUUID()
		if err != nil {
			return Identity{}, host.NewError(host.KindInternal, op, "cannot generate a host UUID", "", err)
		}
		nqn, hid, changed = uuidNQNPfx+u, u, true
	case nqn == "":
		nqn, changed = uuidNQNPfx+hid, true
	case hid == "":
		if u, ok := strings.CutPrefix(nqn, uuidNQNPfx); ok && isUUID(strings.ToLower(u)) {
			hid = strings.ToLower(u)
		} else {
			u, err := host.NewUUID()
			if err != nil {
				return Identity{}, host.NewError(host.KindInternal, op, "cannot generate a host ID", "", err)
			}
			hid = u
		}
		changed = true
	}
	if changed {
		if err := t.root.WriteFileAtomic(HostNQNFile, []byte(nqn+"\n"), 0o644); err != nil {
			return Identity{}, host.NewError(host.KindInternal, op, "cannot write "+HostNQNFile, "check that /etc/nvme is writable", err)
		}
		if err := t.root.WriteFileAtomic(HostIDFile, []byte(hid+"\n"), 0o644); err != nil {
			return Identity{}, host.NewError(host.KindInternal, op, "cannot write "+HostIDFile, "check that /etc/nvme is writable", err)
		}
		t.log.Info("generated the NVMe host identity", zapStr("hostnqn", nqn), zapStr("hostid", hid))
	}
	return Identity{HostNQN: nqn, HostID: hid}, nil
}
