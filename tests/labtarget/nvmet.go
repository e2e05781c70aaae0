package labtarget

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
)

// NVMeOptions describe a subsystem. Zero values take the defaults.
type NVMeOptions struct {
	// Name keeps objects of different tests apart: it names the backing
	// files and, unless NQN is set, the subsystem.
	Name  string   // default "nvme"
	NQN   string   // default nqn.2014-08.lab.sanvol:<Name>
	Addrs []string // portals, default Addr1 and Addr2
	Port  int      // TCP service id, default 4420
	Size  int64    // size of namespace 1, default 1 GiB
	Dir   string   // backing files, default /srv/lab
}

// NVMeNamespace is one namespace of a subsystem, with the identities the
// initiator will see in /sys/block/nvmeXnY/{nguid,uuid}.
type NVMeNamespace struct {
	NSID  int
	File  string
	Size  int64
	NGUID string // 32 hex digits, as the kernel prints it without dashes
	UUID  string
}

// NVMeTarget is one nvmet subsystem exported on one port per address.
type NVMeTarget struct {
	NQN   string
	Addrs []string
	Svc   string

	name       string
	dir        string
	root       string         // <configfs>/nvmet
	ports      map[string]int // addr -> port id
	namespaces map[int]NVMeNamespace
	hosts      []string // host NQNs this target created under hosts/
}

// DHChap is a DH-HMAC-CHAP configuration for one host. Keys are in the
// "DHHC-1:..." representation nvme-cli takes. CtrlKey enables
// bidirectional authentication.
type DHChap struct {
	HostKey string
	CtrlKey string
	Hash    string // default "hmac(sha256)"
	DHGroup string // default "null"
}

// ErrNoTargetAuth says the running kernel's nvmet lacks DH-HMAC-CHAP
// (CONFIG_NVME_TARGET_AUTH): Debian 12's 6.1 kernel; the backports 6.12
// kernel has it (docs/lab-pitfalls.md §7).
var ErrNoTargetAuth = errors.New("this kernel's nvmet has no DH-HMAC-CHAP support (boot the lab with --kernel backports)")

// NewNVMe creates the subsystem, its first namespace and its ports, open
// to any host.
func NewNVMe(ctx context.Context, o NVMeOptions) (*NVMeTarget, error) {
	if o.Name == "" {
		o.Name = "nvme"
	}
	if o.NQN == "" {
		o.NQN = "nqn.2014-08.lab.sanvol:" + o.Name
	}
	if len(o.Addrs) == 0 {
		o.Addrs = []string{Addr1, Addr2}
	}
	if o.Port == 0 {
		o.Port = 4420
	}
	if o.Size == 0 {
		o.Size = 1 << 30
	}
	if o.Dir == "" {
		o.Dir = DefaultBackingDir
	}
	if err := EnsureLoopbackAddrs(ctx); err != nil {
		return nil, err
	}
	root := filepath.Join(ConfigFS, "nvmet")
	if _, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("nvmet configfs not present at %s (modprobe nvmet nvmet-tcp): %w", root, err)
	}
	t := &NVMeTarget{
		NQN: o.NQN, Addrs: o.Addrs, Svc: strconv.Itoa(o.Port),
		name: o.Name, dir: o.Dir, root: root,
		ports: map[string]int{}, namespaces: map[int]NVMeNamespace{},
	}
	sub := t.subsysDir()
	if err := mkdir(sub); err != nil {
		return nil, err
	}
	if err := writeAttr(filepath.Join(sub, "attr_allow_any_host"), "1"); err != nil {
		return t, t.closeAfter(err)
	}
	if _, err := t.AddNamespace(1, o.Size); err != nil {
		return t, t.closeAfter(err)
	}
	for _, a := range o.Addrs {
		id, err := t.ensurePort(a)
		if err != nil {
			return t, t.closeAfter(err)
		}
		t.ports[a] = id
		if err := t.LinkPort(a); err != nil {
			return t, t.closeAfter(err)
		}
	}
	return t, nil
}

func (t *NVMeTarget) closeAfter(err error) error {
	if cerr := t.Close(); cerr != nil {
		return fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
	}
	return err
}

func (t *NVMeTarget) subsysDir() string { return filepath.Join(t.root, "subsystems", t.NQN) }

func (t *NVMeTarget) portDir(id int) string {
	return filepath.Join(t.root, "ports", strconv.Itoa(id))
}

// ensurePort finds the port already serving addr:svc (ports are shared by
// every subsystem on that address) or creates one.
func (t *NVMeTarget) ensurePort(addr string) (int, error) {
	used := map[int]bool{}
	for _, name := range subdirs(filepath.Join(t.root, "ports")) {
		id, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		used[id] = true
		d := t.portDir(id)
		a, _ := readAttr(filepath.Join(d, "addr_traddr"))
		s, _ := readAttr(filepath.Join(d, "addr_trsvcid"))
		if a == addr && s == t.Svc {
			return id, nil
		}
	}
	id := 1
	for used[id] {
		id++
	}
	d := t.portDir(id)
	if err := mkdir(d); err != nil {
		return 0, err
	}
	for _, kv := range [][2]string{
		{"addr_trtype", "tcp"}, {"addr_adrfam", "ipv4"},
		{"addr_traddr", addr}, {"addr_trsvcid", t.Svc},
	} {
		if err := writeAttr(filepath.Join(d, kv[0]), kv[1]); err != nil {
			_ = rmdir(d)
			return 0, err
		}
	}
	return id, nil
}

// AddNamespace adds a file-backed namespace with identities derived from
// the NQN and NSID, so they are the same on every run.
func (t *NVMeTarget) AddNamespace(nsid int, size int64) (NVMeNamespace, error) {
	file, err := backingFile(t.dir, fmt.Sprintf("%s-ns%d.img", t.name, nsid), size)
	if err != nil {
		return NVMeNamespace{}, err
	}
	id := stableID("nguid", t.NQN, strconv.Itoa(nsid))
	ns := NVMeNamespace{
		NSID: nsid, File: file, Size: size,
		NGUID: fmt.Sprintf("%x", id[:]),
		UUID:  uuidString(stableID("uuid", t.NQN, strconv.Itoa(nsid))),
	}
	d := filepath.Join(t.subsysDir(), "namespaces", strconv.Itoa(nsid))
	if err := mkdir(d); err != nil {
		return ns, err
	}
	// tmpfs has no O_DIRECT on 6.1, so the namespace must use the page
	// cache (pitfall 3); buffered_io can only change while disabled.
	for _, kv := range [][2]string{
		{"device_path", file}, {"buffered_io", "1"},
		{"device_nguid", nguidDashed(id)}, {"device_uuid", ns.UUID},
		{"enable", "1"},
	} {
		if err := writeAttr(filepath.Join(d, kv[0]), kv[1]); err != nil {
			_ = rmdir(d)
			return ns, err
		}
	}
	t.namespaces[nsid] = ns
	return ns, nil
}

// nguidDashed is the NGUID in the dashed form device_nguid parses; unlike
// a UUID it keeps all 128 bits as given.
func nguidDashed(id [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:16])
}

// Namespace returns a namespace added earlier.
func (t *NVMeTarget) Namespace(nsid int) (NVMeNamespace, bool) {
	ns, ok := t.namespaces[nsid]
	return ns, ok
}

// GrowNamespace enlarges the backing file and makes nvmet re-read its
// size, which sends the hosts a namespace-attributes-changed event.
func (t *NVMeTarget) GrowNamespace(nsid int, size int64) error {
	ns, ok := t.namespaces[nsid]
	if !ok {
		return fmt.Errorf("nvmet %s: no namespace %d", t.NQN, nsid)
	}
	if size < ns.Size {
		return fmt.Errorf("nvmet %s ns %d: %d is smaller than %d", t.NQN, nsid, size, ns.Size)
	}
	if _, err := backingFile(t.dir, filepath.Base(ns.File), size); err != nil {
		return err
	}
	d := filepath.Join(t.subsysDir(), "namespaces", strconv.Itoa(nsid))
	if err := writeAttr(filepath.Join(d, "revalidate_size"), "1"); err != nil {
		return err
	}
	ns.Size = size
	t.namespaces[nsid] = ns
	return nil
}

// UnlinkPort stops exporting the subsystem on addr. Hosts connected
// through it see the controller go to "connecting" and fail over.
func (t *NVMeTarget) UnlinkPort(addr string) error {
	id, ok := t.ports[addr]
	if !ok {
		return fmt.Errorf("nvmet %s: no port on %s", t.NQN, addr)
	}
	return unlink(filepath.Join(t.portDir(id), "subsystems", t.NQN))
}

// LinkPort exports the subsystem on addr (again).
func (t *NVMeTarget) LinkPort(addr string) error {
	id, ok := t.ports[addr]
	if !ok {
		return fmt.Errorf("nvmet %s: no port on %s", t.NQN, addr)
	}
	return symlink(t.subsysDir(), filepath.Join(t.portDir(id), "subsystems", t.NQN))
}

// AllowAnyHost opens the subsystem to every host NQN.
func (t *NVMeTarget) AllowAnyHost() error {
	return writeAttr(filepath.Join(t.subsysDir(), "attr_allow_any_host"), "1")
}

// AllowHost restricts the subsystem to the listed host (plus any allowed
// before), optionally with DH-HMAC-CHAP.
func (t *NVMeTarget) AllowHost(hostNQN string, auth *DHChap) error {
	hd := filepath.Join(t.root, "hosts", hostNQN)
	if err := mkdir(hd); err != nil {
		return err
	}
	t.hosts = append(t.hosts, hostNQN)
	if auth != nil {
		if _, err := os.Stat(filepath.Join(hd, "dhchap_key")); err != nil {
			return ErrNoTargetAuth
		}
		hash, group := auth.Hash, auth.DHGroup
		if hash == "" {
			hash = "hmac(sha256)"
		}
		if group == "" {
			group = "null"
		}
		for _, kv := range [][2]string{
			{"dhchap_hash", hash}, {"dhchap_dhgroup", group},
			{"dhchap_key", auth.HostKey}, {"dhchap_ctrl_key", auth.CtrlKey},
		} {
			if kv[1] == "" {
				continue
			}
			if err := writeAttr(filepath.Join(hd, kv[0]), kv[1]); err != nil {
				return err
			}
		}
	}
	// nvmet refuses allowed_hosts links (EINVAL) while allow_any_host is set.
	if err := writeAttr(filepath.Join(t.subsysDir(), "attr_allow_any_host"), "0"); err != nil {
		return err
	}
	return symlink(hd, filepath.Join(t.subsysDir(), "allowed_hosts", hostNQN))
}

// GenerateDHChapKey makes a random 32-byte secret in the DHHC-1
// representation (no key transformation): base64 of the key followed by
// its CRC-32, as nvme gen-dhchap-key prints it.
func GenerateDHChapKey() (string, error) {
	key := make([]byte, 32, 36)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	return dhchapKey(key), nil
}

func dhchapKey(key []byte) string {
	b := binary.LittleEndian.AppendUint32(append([]byte(nil), key...), crc32.ChecksumIEEE(key))
	return "DHHC-1:00:" + base64.StdEncoding.EncodeToString(b) + ":"
}

// Close unexports and removes the subsystem, its namespaces, the ports no
// other subsystem uses and the backing files. It is safe to call twice.
func (t *NVMeTarget) Close() error {
	var errs []error
	for _, id := range t.ports {
		errs = append(errs, unlink(filepath.Join(t.portDir(id), "subsystems", t.NQN)))
		if len(links(filepath.Join(t.portDir(id), "subsystems"))) == 0 {
			errs = append(errs, rmdir(t.portDir(id)))
		}
	}
	sub := t.subsysDir()
	for _, h := range links(filepath.Join(sub, "allowed_hosts")) {
		errs = append(errs, unlink(filepath.Join(sub, "allowed_hosts", h)))
	}
	for _, h := range t.hosts {
		errs = append(errs, rmdirIfUnused(filepath.Join(t.root, "hosts", h)))
	}
	for _, n := range subdirs(filepath.Join(sub, "namespaces")) {
		d := filepath.Join(sub, "namespaces", n)
		_ = writeAttr(filepath.Join(d, "enable"), "0")
		errs = append(errs, rmdir(d))
	}
	errs = append(errs, rmdir(sub))
	for _, ns := range t.namespaces {
		if err := os.Remove(ns.File); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	t.ports, t.namespaces, t.hosts = map[string]int{}, map[int]NVMeNamespace{}, nil
	return errors.Join(errs...)
}

// rmdirIfUnused removes a hosts/ entry unless another subsystem still
// links it, which configfs refuses with EBUSY.
func rmdirIfUnused(d string) error {
	err := rmdir(d)
	if errors.Is(err, syscall.EBUSY) {
		return nil
	}
	return err
}

// CleanNVMet removes every nvmet object, whoever made it: a scenario that
// died half-way must not leave ports bound for the next one.
func CleanNVMet() error {
	root := filepath.Join(ConfigFS, "nvmet")
	var errs []error
	for _, p := range subdirs(filepath.Join(root, "ports")) {
		pd := filepath.Join(root, "ports", p)
		for _, l := range links(filepath.Join(pd, "subsystems")) {
			errs = append(errs, unlink(filepath.Join(pd, "subsystems", l)))
		}
		errs = append(errs, rmdir(pd))
	}
	subs := subdirs(filepath.Join(root, "subsystems"))
	sort.Strings(subs)
	for _, s := range subs {
		sd := filepath.Join(root, "subsystems", s)
		for _, h := range links(filepath.Join(sd, "allowed_hosts")) {
			errs = append(errs, unlink(filepath.Join(sd, "allowed_hosts", h)))
		}
		for _, n := range subdirs(filepath.Join(sd, "namespaces")) {
			_ = writeAttr(filepath.Join(sd, "namespaces", n, "enable"), "0")
			errs = append(errs, rmdir(filepath.Join(sd, "namespaces", n)))
		}
		errs = append(errs, rmdir(sd))
	}
	for _, h := range subdirs(filepath.Join(root, "hosts")) {
		errs = append(errs, rmdir(filepath.Join(root, "hosts", h)))
	}
	return errors.Join(errs...)
}
