package nvme

import (
	"errors"
	"io/fs"
	"net/netip"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/blockdev"
	"github.com/sanvol/sanvol/host"
)

// sysfs locations (kernel drivers/nvme/host/{core,sysfs,multipath}.c).
const (
	sysClassNVMe      = "/sys/class/nvme"
	sysClassSubsys    = "/sys/class/nvme-subsystem"
	sysBlock          = "/sys/block"
	sysModNVMeTCP     = "/sys/module/nvme_tcp"
	sysMultipathParam = "/sys/module/nvme_core/parameters/multipath"
	devFabrics        = "/dev/nvme-fabrics"
)

var (
	ctrlNameRe = regexp.MustCompile(`^nvme[0-9]+$`)
	headNameRe = regexp.MustCompile(`^nvme[0-9]+n[0-9]+$`)
)

// Controller is one path: a fabrics controller in /sys/class/nvme.
type Controller struct {
	Name      string // nvme3
	SubsysNQN string
	State     string // live, connecting, resetting, deleting, new, dead…
	Transport string
	TrAddr    string
	TrSvcID   string
	HostIface string
	HostNQN   string
	HostID    string
	// HasDHCHAP is true when the dhchap_secret attribute exists, which the
	// kernel only builds with in-band authentication (CONFIG_NVME_AUTH /
	// CONFIG_NVME_HOST_AUTH).
	HasDHCHAP bool
}

// Portal renders the controller's address like Portal.String.
func (c Controller) Portal() string {
	if a, err := netip.ParseAddr(c.TrAddr); err == nil {
		if p, err := strconv.Atoi(c.TrSvcID); err == nil {
			return netip.AddrPortFrom(a, uint16(p)).String()
		}
	}
	return c.TrAddr + ":" + c.TrSvcID
}

// Namespace is a multipath head block device (nvmeXnY, never the hidden
// per-path nvmeXcYnZ).
type Namespace struct {
	Name    string // nvme0n1
	NSID    uint32
	WWID    string // kernel's choice: uuid.<…>, eui.<…> or nvme.<vid>-<serial>-<model>-<nsid>
	UUID    string // 32 hex digits or ""
	NGUID   string // 32 hex digits or ""
	EUI64   string // 16 hex digits or ""
	Size    int64  // bytes
	Holders []string
}

// Subsystem is one /sys/class/nvme-subsystem entry.
type Subsystem struct {
	Name        string // nvme-subsys0
	NQN         string
	IOPolicy    string
	Controllers []string
	Heads       []string
}

// sysfs reads NVMe state through host.Root.
type sysfs struct {
	root host.Root
}

func (s sysfs) attr(p string) string {
	v, err := s.root.ReadString(p)
	if err != nil {
		return ""
	}
	return v
}

// controllers lists every NVMe controller on the host, sorted by name.
func (s sysfs) controllers() ([]Controller, error) {
	ents, err := s.root.ReadDir(sysClassNVMe)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Controller
	for _, e := range ents {
		if !ctrlNameRe.MatchString(e.Name()) {
			continue
		}
		out = append(out, s.controller(e.Name()))
	}
	sortControllers(out)
	return out, nil
}

func sortControllers(cs []Controller) {
	sort.Slice(cs, func(i, j int) bool { return ctrlIndex(cs[i].Name) < ctrlIndex(cs[j].Name) })
}

func ctrlIndex(name string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(name, "nvme"))
	return n
}

func (s sysfs) controller(name string) Controller {
	dir := path.Join(sysClassNVMe, name)
	c := Controller{
		Name:      name,
		SubsysNQN: s.attr(dir + "/subsysnqn"),
		State:     s.attr(dir + "/state"),
		Transport: s.attr(dir + "/transport"),
		HostNQN:   s.attr(dir + "/hostnqn"),
		HostID:    strings.ToLower(s.attr(dir + "/hostid")),
		HasDHCHAP: s.root.Exists(dir + "/dhchap_secret"),
	}
	addr := parseAddress(s.attr(dir + "/address"))
	c.TrAddr, c.TrSvcID, c.HostIface = addr["traddr"], addr["trsvcid"], addr["host_iface"]
	return c
}

// parseAddress reads the kernel's address attribute. It is
// "traddr=…,trsvcid=…[,host_traddr=…][,host_iface=…][,src_addr=…]";
// democratic-csi saw it space-separated through nvme-cli < 2.2.1, so both
// separators are accepted.
func parseAddress(s string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

// subsystems lists every NVMe subsystem, sorted by name.
func (s sysfs) subsystems() ([]Subsystem, error) {
	ents, err := s.root.ReadDir(sysClassSubsys)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Subsystem
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "nvme-subsys") {
			continue
		}
		out = append(out, s.subsystem(e.Name()))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s sysfs) subsystem(name string) Subsystem {
	dir := path.Join(sysClassSubsys, name)
	sub := Subsystem{Name: name, NQN: s.attr(dir + "/subsysnqn"), IOPolicy: s.attr(dir + "/iopolicy")}
	ents, _ := s.root.ReadDir(dir)
	for _, e := range ents {
		switch {
		case ctrlNameRe.MatchString(e.Name()):
			sub.Controllers = append(sub.Controllers, e.Name())
		case headNameRe.MatchString(e.Name()):
			sub.Heads = append(sub.Heads, e.Name())
		}
	}
	sort.Strings(sub.Heads)
	return sub
}

// subsystemByNQN finds the subsystem with that NQN, or ok=false.
func (s sysfs) subsystemByNQN(nqn string) (Subsystem, bool, error) {
	subs, err := s.subsystems()
	if err != nil {
		return Subsystem{}, false, err
	}
	for _, sub := range subs {
		if sub.NQN == nqn {
			return sub, true, nil
		}
	}
	return Subsystem{}, false, nil
}

func (s sysfs) namespace(name string) Namespace {
	dir := path.Join(sysBlock, name)
	ns := Namespace{Name: name, WWID: s.attr(dir + "/wwid")}
	if n, err := strconv.ParseUint(s.attr(dir+"/nsid"), 10, 32); err == nil {
		ns.NSID = uint32(n)
	}
	if n, err := strconv.ParseInt(s.attr(dir+"/size"), 10, 64); err == nil {
		ns.Size = n * 512 // sysfs size is always in 512-byte sectors
	}
	// The uuid attribute falls back to printing the NGUID when the
	// namespace has no UUID, so a UUID is only trusted from the wwid.
	if strings.HasPrefix(ns.WWID, "uuid.") {
		ns.UUID = hexOnly(ns.WWID[5:])
	}
	ns.NGUID = nonZero(hexOnly(s.attr(dir + "/nguid")))
	ns.EUI64 = nonZero(hexOnly(s.attr(dir + "/eui")))
	ns.Holders = blockdev.Holders(s.root, name)
	return ns
}

func hexOnly(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f':
			return r
		case r >= 'A' && r <= 'F':
			return r + ('a' - 'A')
		}
		return -1
	}, s)
}

func nonZero(h string) string {
	if strings.Trim(h, "0") == "" {
		return ""
	}
	return h
}

// StableID is the identity stored in the SR's configuration: the kernel's
// wwid when it is built from a global identifier, else one we build in the
// same form. ok=false when the namespace reports none.
func (ns Namespace) StableID() (string, bool) {
	switch {
	case strings.HasPrefix(ns.WWID, "uuid."), strings.HasPrefix(ns.WWID, "eui."):
		return ns.WWID, true
	case ns.UUID != "":
		return "uuid." + dashed(ns.UUID), true
	case ns.NGUID != "":
		return "eui." + ns.NGUID, true
	case ns.EUI64 != "":
		return "eui." + ns.EUI64, true
	}
	return "", false
}

// Matches reports whether the namespace is the one id names.
func (ns Namespace) Matches(id NamespaceID) bool {
	if id.NSID != 0 {
		return ns.NSID == id.NSID
	}
	switch id.Kind {
	case "uuid":
		return ns.UUID == id.Hex
	case "nguid":
		return ns.NGUID == id.Hex
	case "eui64":
		return ns.EUI64 == id.Hex
	case "uuid|nguid":
		return ns.UUID == id.Hex || ns.NGUID == id.Hex
	}
	return false
}

// pathANAStates maps each per-path device of a controller to its ANA
// state, for diagnostics.
func (s sysfs) pathANAStates(ctrl string) map[string]string {
	out := map[string]string{}
	m, _ := s.root.Glob(path.Join(sysClassNVMe, ctrl, "nvme*c*n*", "ana_state"))
	for _, p := range m {
		out[path.Base(path.Dir(p))] = s.attr(p)
	}
	return out
}
