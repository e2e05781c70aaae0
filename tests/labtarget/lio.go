package labtarget

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ISCSIOptions describe a LIO target with one LUN. Zero values take the
// defaults.
type ISCSIOptions struct {
	// Name keeps objects of different tests apart: it names the backstore,
	// the backing file and, unless IQN is set, the target.
	Name   string   // default "iscsi"
	IQN    string   // default iqn.2003-01.lab.sanvol:<Name>
	Addrs  []string // one TPG per portal, default Addr1 (tpgt_1) and Addr2 (tpgt_2)
	Port   int      // default 3260
	Size   int64    // default 1 GiB
	Dir    string   // backing files, default /srv/lab
	Serial string   // vpd_unit_serial, default 32 hex digits derived from Name
}

// CHAP credentials for one initiator. With MutualUser set the initiator
// also authenticates the target.
type CHAP struct {
	User, Password             string
	MutualUser, MutualPassword string
}

type tpg struct {
	iqn  string
	tag  int
	addr string
}

// ISCSITarget is one LUN (a fileio backstore) exported by one or more
// target IQNs, each with one TPG per portal.
type ISCSITarget struct {
	IQN    string // the main target
	Serial string
	File   string
	Size   int64
	Port   int

	backstore string // <configfs>/target/core/fileio_0/<name>
	root      string // <configfs>/target
	tpgs      []tpg
	acls      map[string]*CHAP // initiator IQN -> credentials (nil = no CHAP)
}

// NewISCSI creates the backstore and the main target with a TPG per
// address, open to any initiator without authentication.
func NewISCSI(ctx context.Context, o ISCSIOptions) (*ISCSITarget, error) {
	if o.Name == "" {
		o.Name = "iscsi"
	}
	if o.IQN == "" {
		o.IQN = "iqn.2003-01.lab.sanvol:" + o.Name
	}
	if len(o.Addrs) == 0 {
		o.Addrs = []string{Addr1, Addr2}
	}
	if o.Port == 0 {
		o.Port = 3260
	}
	if o.Size == 0 {
		o.Size = 1 << 30
	}
	if o.Dir == "" {
		o.Dir = DefaultBackingDir
	}
	if o.Serial == "" {
		id := stableID("serial", o.Name)
		o.Serial = fmt.Sprintf("%x", id[:])
	}
	if err := EnsureLoopbackAddrs(ctx); err != nil {
		return nil, err
	}
	root := filepath.Join(ConfigFS, "target")
	if _, err := os.Stat(filepath.Join(root, "core")); err != nil {
		return nil, fmt.Errorf("LIO configfs not present at %s (modprobe target_core_mod target_core_file iscsi_target_mod): %w", root, err)
	}
	// LIO complains about a missing db_root otherwise (pitfall 8).
	_ = os.MkdirAll("/etc/target", 0o755)
	t := &ISCSITarget{
		IQN: o.IQN, Serial: o.Serial, Size: o.Size, Port: o.Port, root: root,
		backstore: filepath.Join(root, "core", "fileio_0", o.Name),
		acls:      map[string]*CHAP{},
	}
	file, err := backingFile(o.Dir, o.Name+".img", o.Size)
	if err != nil {
		return nil, err
	}
	t.File = file
	if err := t.createBackstore(); err != nil {
		return t, t.closeAfter(err)
	}
	if err := t.ExportIQN(o.IQN, o.Addrs...); err != nil {
		return t, t.closeAfter(err)
	}
	return t, nil
}

func (t *ISCSITarget) closeAfter(err error) error {
	if cerr := t.Close(); cerr != nil {
		return fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
	}
	return err
}

func (t *ISCSITarget) createBackstore() error {
	if err := os.MkdirAll(t.backstore, 0o755); err != nil {
		return fmt.Errorf("configfs: mkdir %s: %w", t.backstore, err)
	}
	// tmpfs has no O_DIRECT on 6.1, hence buffered I/O (pitfall 3).
	ctl := fmt.Sprintf("fd_dev_name=%s,fd_dev_size=%d,fd_buffered_io=1", t.File, t.Size)
	if err := writeAttr(filepath.Join(t.backstore, "control"), ctl); err != nil {
		return err
	}
	// A fixed unit serial gives a fixed NAA WWID (page 0x83) on every run.
	if err := writeAttr(filepath.Join(t.backstore, "wwn", "vpd_unit_serial"), t.Serial); err != nil {
		return err
	}
	return writeAttr(filepath.Join(t.backstore, "enable"), "1")
}

// WWID is the SCSI WWID initiators will see for the LUN (multipath's map
// name, /sys/block/sdX/device/wwid without the "naa." prefix plus "3"):
// LIO builds an NAA type 6 identifier from its IEEE company id 001405 and
// the first 25 hex digits of the unit serial.
func (t *ISCSITarget) WWID() string {
	var hex []byte
	for _, c := range strings.ToLower(t.Serial) {
		if (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') {
			hex = append(hex, byte(c))
		}
	}
	for len(hex) < 25 {
		hex = append(hex, '0')
	}
	return "36001405" + string(hex[:25])
}

func (t *ISCSITarget) tpgDir(g tpg) string {
	return filepath.Join(t.root, "iscsi", g.iqn, "tpgt_"+strconv.Itoa(g.tag))
}

// ExportIQN exports the LUN through target iqn with one TPG per address.
// Called with a second IQN and only the second portal, it builds the
// "one IQN per portal" layout of the Citrix and NexentaStor guides.
func (t *ISCSITarget) ExportIQN(iqn string, addrs ...string) error {
	if err := mkdir(filepath.Join(t.root, "iscsi")); err != nil {
		return err
	}
	if err := mkdir(filepath.Join(t.root, "iscsi", iqn)); err != nil {
		return err
	}
	for _, a := range addrs {
		tag := 1
		for _, g := range t.tpgs {
			if g.iqn == iqn && g.tag >= tag {
				tag = g.tag + 1
			}
		}
		g := tpg{iqn: iqn, tag: tag, addr: a}
		t.tpgs = append(t.tpgs, g)
		if err := t.buildTPG(g); err != nil {
			return err
		}
	}
	return nil
}

// buildTPG creates (or recreates) a TPG with its portal, the LUN, the
// current ACLs, and enables it.
func (t *ISCSITarget) buildTPG(g tpg) error {
	d := t.tpgDir(g)
	steps := []func() error{
		func() error { return mkdir(d) },
		func() error { return mkdir(filepath.Join(d, "np", fmt.Sprintf("%s:%d", g.addr, t.Port))) },
		func() error { return mkdir(filepath.Join(d, "lun", "lun_0")) },
		func() error { return symlink(t.backstore, filepath.Join(d, "lun", "lun_0", "lio")) },
		func() error { return t.applyAuth(g) },
		func() error { return writeAttr(filepath.Join(d, "enable"), "1") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("target %s tpgt_%d on %s: %w", g.iqn, g.tag, g.addr, err)
		}
	}
	return nil
}

// applyAuth puts the TPG in demo mode (any initiator, no CHAP) when no
// initiator was registered, otherwise in ACL mode with per-initiator CHAP.
func (t *ISCSITarget) applyAuth(g tpg) error {
	d := t.tpgDir(g)
	attr := func(k, v string) error { return writeAttr(filepath.Join(d, "attrib", k), v) }
	if len(t.acls) == 0 {
		for _, kv := range [][2]string{
			{"authentication", "0"}, {"generate_node_acls", "1"},
			{"demo_mode_write_protect", "0"}, {"cache_dynamic_acls", "1"},
		} {
			if err := attr(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	}
	auth := "0"
	for init, c := range t.acls {
		if err := t.writeACL(g, init, c); err != nil {
			return err
		}
		if c != nil {
			auth = "1"
		}
	}
	if err := attr("generate_node_acls", "0"); err != nil {
		return err
	}
	return attr("authentication", auth)
}

func (t *ISCSITarget) writeACL(g tpg, initiator string, c *CHAP) error {
	ad := filepath.Join(t.tpgDir(g), "acls", initiator)
	if err := mkdir(ad); err != nil {
		return err
	}
	if err := mkdir(filepath.Join(ad, "lun_0")); err != nil {
		return err
	}
	if err := symlink(filepath.Join(t.tpgDir(g), "lun", "lun_0"), filepath.Join(ad, "lun_0", "lio")); err != nil {
		return err
	}
	if c == nil {
		c = &CHAP{}
	}
	// No trailing newline, or LIO compares "user\n" (pitfall 8).
	for _, kv := range [][2]string{
		{"userid", c.User}, {"password", c.Password},
		{"userid_mutual", c.MutualUser}, {"password_mutual", c.MutualPassword},
	} {
		// configfs refuses an empty write (EFAULT); a fresh ACL's
		// attributes are empty already.
		if kv[1] == "" {
			continue
		}
		if err := writeAttr(filepath.Join(ad, "auth", kv[0]), kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// AllowInitiator switches every TPG to ACL mode and admits initiator,
// with CHAP (one-way, or mutual when c.MutualUser is set) or without
// (c == nil). Other initiators are then refused.
func (t *ISCSITarget) AllowInitiator(initiator string, c *CHAP) error {
	t.acls[initiator] = c
	for _, g := range t.tpgs {
		if err := t.applyAuth(g); err != nil {
			return err
		}
	}
	return nil
}

func (t *ISCSITarget) mainTPG(addr string) (tpg, error) {
	for _, g := range t.tpgs {
		if g.iqn == t.IQN && g.addr == addr {
			return g, nil
		}
	}
	return tpg{}, fmt.Errorf("target %s has no portal on %s", t.IQN, addr)
}

// DisablePortal disables the main target's TPG on addr: its sessions drop
// and logins are refused until EnablePortal (pitfall 9).
func (t *ISCSITarget) DisablePortal(addr string) error {
	g, err := t.mainTPG(addr)
	if err != nil {
		return err
	}
	return writeAttr(filepath.Join(t.tpgDir(g), "enable"), "0")
}

// EnablePortal re-enables the main target's TPG on addr.
func (t *ISCSITarget) EnablePortal(addr string) error {
	g, err := t.mainTPG(addr)
	if err != nil {
		return err
	}
	return writeAttr(filepath.Join(t.tpgDir(g), "enable"), "1")
}

// VanishPortal removes the main target's TPG on addr entirely, portal
// included, as when an HA pair (HA-Lizard) fails over and the target on
// one address is simply gone: connections are refused, not rejected.
func (t *ISCSITarget) VanishPortal(addr string) error {
	g, err := t.mainTPG(addr)
	if err != nil {
		return err
	}
	return t.removeTPG(g)
}

// ReturnPortal recreates a vanished TPG with the same tag, LUN, serial and
// ACLs: the initiator must find the very same LUN again.
func (t *ISCSITarget) ReturnPortal(addr string) error {
	g, err := t.mainTPG(addr)
	if err != nil {
		return err
	}
	return t.buildTPG(g)
}

// Grow enlarges the LUN. LIO reads a file backstore's size from
// fd_dev_size, not from the file, so both change; LIO does not tell the
// initiators: they see the new size after a rescan.
func (t *ISCSITarget) Grow(size int64) error {
	if size < t.Size {
		return fmt.Errorf("LUN %s: %d is smaller than %d", t.Serial, size, t.Size)
	}
	if _, err := backingFile(filepath.Dir(t.File), filepath.Base(t.File), size); err != nil {
		return err
	}
	if err := writeAttr(filepath.Join(t.backstore, "control"), fmt.Sprintf("fd_dev_size=%d", size)); err != nil {
		return err
	}
	t.Size = size
	return nil
}

func (t *ISCSITarget) removeTPG(g tpg) error {
	d := t.tpgDir(g)
	if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	_ = writeAttr(filepath.Join(d, "enable"), "0")
	for _, a := range subdirs(filepath.Join(d, "acls")) {
		ad := filepath.Join(d, "acls", a)
		for _, l := range subdirs(ad) {
			if !strings.HasPrefix(l, "lun_") {
				continue
			}
			for _, ln := range links(filepath.Join(ad, l)) {
				errs = append(errs, unlink(filepath.Join(ad, l, ln)))
			}
			errs = append(errs, rmdir(filepath.Join(ad, l)))
		}
		errs = append(errs, rmdir(ad))
	}
	for _, l := range subdirs(filepath.Join(d, "lun")) {
		for _, ln := range links(filepath.Join(d, "lun", l)) {
			errs = append(errs, unlink(filepath.Join(d, "lun", l, ln)))
		}
		errs = append(errs, rmdir(filepath.Join(d, "lun", l)))
	}
	for _, np := range subdirs(filepath.Join(d, "np")) {
		errs = append(errs, rmdir(filepath.Join(d, "np", np)))
	}
	errs = append(errs, rmdir(d))
	return errors.Join(errs...)
}

// Close removes every TPG and target IQN this object made, then the
// backstore and its file. It is safe to call twice.
func (t *ISCSITarget) Close() error {
	var errs []error
	iqns := map[string]bool{}
	for _, g := range t.tpgs {
		errs = append(errs, t.removeTPG(g))
		iqns[g.iqn] = true
	}
	for iqn := range iqns {
		errs = append(errs, rmdir(filepath.Join(t.root, "iscsi", iqn)))
	}
	errs = append(errs, rmdir(t.backstore))
	// The HBA directory goes with its last device.
	hba := filepath.Dir(t.backstore)
	if len(subdirs(hba)) == 0 {
		errs = append(errs, rmdir(hba))
	}
	if t.File != "" {
		if err := os.Remove(t.File); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	t.tpgs = nil
	return errors.Join(errs...)
}

// CleanLIO removes every LIO iSCSI target and backstore, whoever made it.
func CleanLIO() error {
	root := filepath.Join(ConfigFS, "target")
	t := &ISCSITarget{root: root}
	var errs []error
	for _, iqn := range subdirs(filepath.Join(root, "iscsi")) {
		if !strings.HasPrefix(iqn, "iqn.") && !strings.HasPrefix(iqn, "eui.") && !strings.HasPrefix(iqn, "naa.") {
			continue // discovery_auth and other fabric-level directories
		}
		for _, tp := range subdirs(filepath.Join(root, "iscsi", iqn)) {
			tag, err := strconv.Atoi(strings.TrimPrefix(tp, "tpgt_"))
			if err != nil {
				continue
			}
			errs = append(errs, t.removeTPG(tpg{iqn: iqn, tag: tag}))
		}
		errs = append(errs, rmdir(filepath.Join(root, "iscsi", iqn)))
	}
	for _, hba := range subdirs(filepath.Join(root, "core")) {
		if hba == "alua" {
			continue
		}
		for _, dev := range subdirs(filepath.Join(root, "core", hba)) {
			errs = append(errs, rmdir(filepath.Join(root, "core", hba, dev)))
		}
		errs = append(errs, rmdir(filepath.Join(root, "core", hba)))
	}
	return errors.Join(errs...)
}
