package doctor

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
)

// portal is one storage address of an SR.
type portal struct {
	Text string // as written in device-config:target
	Addr netip.Addr
	Port int
}

func (p portal) String() string { return netip.AddrPortFrom(p.Addr, uint16(p.Port)).String() }

// subject is one SR to check: attached (SR set) or only described by a
// device-config (the pre-flight before sr-create).
type subject struct {
	Type    string
	SR      string
	Config  map[string]string
	Portals []portal
	// Bind lists, per portal, the interfaces the admin bound it to
	// (nvmetcp host-iface, iscsi-ng iface); empty means the kernel
	// routes it.
	Bind [][]string
	// err is a device-config the doctor cannot read.
	err    error
	errFix string
}

func (s *subject) scope() string {
	if s.SR != "" {
		return fmt.Sprintf("SR %s (%s)", s.SR, s.Type)
	}
	return fmt.Sprintf("%s target %s (not attached here)", s.Type, s.Config[keyTarget])
}

// Device-config keys the doctor reads. They are the transports' keys
// (docs/nvmetcp.md, docs/iscsi-ng.md).
const (
	keyTarget       = "target"
	keyPort         = "port"
	keyNQN          = "nqn"
	keyHostNQN      = "hostnqn"
	keyHostIface    = "host-iface"
	keyIOPolicy     = "iopolicy"
	keyTargetIQN    = "targetIQN"
	keySCSIid       = "SCSIid"
	keyIface        = "iface"
	keyReplacement  = "replacement-timeout"
	keyPathLoss     = "path-loss-policy"
	defaultNVMePort = 4420
	defaultISCSI    = 3260
)

func subjectsFor(ctx context.Context, d Deps, o Options) ([]*subject, error) {
	switch {
	case o.SR != "":
		a, err := volume.LoadAttached(d.Root, o.SR)
		if err != nil {
			return nil, err
		}
		return []*subject{newSubject(ctx, d, a.Type, a.UUID, a.Configuration)}, nil
	case o.Type != "":
		if o.Type != TypeNVMeTCP && o.Type != TypeISCSI {
			return nil, host.Errorf(host.KindInvalid, "sanvol doctor", fmt.Sprintf("unknown SR type %q", o.Type), "use --type nvmetcp or --type iscsi-ng", nil)
		}
		if strings.TrimSpace(o.Config[keyTarget]) == "" {
			return nil, host.Errorf(host.KindInvalid, "sanvol doctor", "--type needs the portals", "add --target <portal>,<portal> (the SR's device-config:target)", nil)
		}
		return []*subject{newSubject(ctx, d, o.Type, "", o.Config)}, nil
	}
	as, err := volume.ListAttached(d.Root)
	if err != nil {
		return nil, err
	}
	var out []*subject
	for _, a := range as {
		out = append(out, newSubject(ctx, d, a.Type, a.UUID, a.Configuration))
	}
	return out, nil
}

func newSubject(ctx context.Context, d Deps, typ, sr string, cfg map[string]string) *subject {
	s := &subject{Type: typ, SR: sr, Config: cfg}
	if s.Config == nil {
		s.Config = map[string]string{}
	}
	port := defaultISCSI
	if typ == TypeNVMeTCP {
		port = defaultNVMePort
	}
	if v := strings.TrimSpace(cfg[keyPort]); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			s.err, s.errFix = fmt.Errorf("device-config:port=%q is not a TCP port", v), "give a port from 1 to 65535"
			return s
		}
		port = n
	}
	for _, f := range strings.Split(cfg[keyTarget], ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := parsePortal(ctx, d, f, port)
		if err != nil {
			s.err, s.errFix = fmt.Errorf("device-config:target has %q: %v", f, err), "give portal addresses, e.g. target=10.0.1.10,10.0.2.10 or target=10.0.1.10:3260,[fd00::1]:3260"
			return s
		}
		s.Portals = append(s.Portals, p)
	}
	if len(s.Portals) == 0 {
		s.err, s.errFix = fmt.Errorf("device-config:target names no portal"), "give the array's portal addresses: target=<portal>,<portal>"
		return s
	}
	s.Bind = make([][]string, len(s.Portals))
	var err error
	if typ == TypeNVMeTCP {
		err = s.bindNVMe(cfg[keyHostIface])
	} else {
		err = s.bindISCSI(cfg[keyIface])
	}
	if err != nil {
		s.err, s.errFix = err, "fix the interface binding: see docs/nvmetcp.md (host-iface) or docs/iscsi-ng.md (iface)"
	}
	return s
}

// parsePortal reads "addr", "addr:port", "[v6]:port", a bare IPv6 address
// or a host name.
func parsePortal(ctx context.Context, d Deps, f string, port int) (portal, error) {
	p := portal{Text: f, Port: port}
	if ap, err := netip.ParseAddrPort(f); err == nil {
		p.Addr, p.Port = ap.Addr().Unmap(), int(ap.Port())
		return p, nil
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(f, "["), "]")); err == nil {
		p.Addr = a.Unmap()
		return p, nil
	}
	name := f
	if h, ps, err := net.SplitHostPort(f); err == nil {
		n, err := strconv.Atoi(ps)
		if err != nil || n < 1 || n > 65535 {
			return p, fmt.Errorf("bad port %q", ps)
		}
		name, p.Port = h, n
	}
	if strings.ContainsAny(name, ":/ ") {
		return p, fmt.Errorf("not an address")
	}
	addrs, err := d.Resolve(ctx, name)
	if err != nil {
		return p, fmt.Errorf("cannot resolve %s: %v", name, err)
	}
	for _, s := range addrs {
		if a, err := netip.ParseAddr(s); err == nil && (a.Is4() || !p.Addr.IsValid()) {
			p.Addr = a.Unmap()
		}
	}
	if !p.Addr.IsValid() {
		return p, fmt.Errorf("%s resolves to no address", name)
	}
	return p, nil
}

// bindNVMe reads host-iface: one interface for every portal, or one per
// portal in the order of target.
func (s *subject) bindNVMe(v string) error {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	names := splitList(v)
	switch len(names) {
	case 1:
		for i := range s.Bind {
			s.Bind[i] = []string{names[0]}
		}
	case len(s.Portals):
		for i := range s.Bind {
			s.Bind[i] = []string{names[i]}
		}
	default:
		return fmt.Errorf("device-config:host-iface names %d interfaces for %d portals", len(names), len(s.Portals))
	}
	return nil
}

// bindISCSI reads iface: "eth1" sends every portal through eth1,
// "eth1=10.0.1.10" one portal.
func (s *subject) bindISCSI(v string) error {
	for _, e := range splitList(v) {
		nic, target, found := strings.Cut(e, "=")
		nic, target = strings.TrimSpace(nic), strings.TrimSpace(target)
		matched := false
		for i, p := range s.Portals {
			if !found || target == p.Text || target == p.Addr.String() || target == p.String() {
				s.Bind[i] = append(s.Bind[i], nic)
				matched = true
			}
		}
		if !matched {
			return fmt.Errorf("device-config:iface binds %s to %q, which is not in device-config:target", nic, target)
		}
	}
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
