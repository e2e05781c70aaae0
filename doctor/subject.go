package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/nvme"
	"github.com/sanvol/sanvol/volume"
)

// portal is one storage address of an SR.
type portal struct {
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
	// nvme or iscsi is the device-config as the SR's transport reads it.
	nvme  nvme.Config
	iscsi iscsi.Config
	// err is a device-config the transport refuses.
	err    error
	errFix string
}

func (s *subject) scope() string {
	if s.SR != "" {
		return fmt.Sprintf("SR %s (%s)", s.SR, s.Type)
	}
	return fmt.Sprintf("%s target %s (not attached here)", s.Type, s.Config[nvme.KeyTarget])
}

// transports are the SR types' own readers. The doctor parses
// device-configs and inspects sessions, paths and maps only through them,
// so it reads an SR exactly as the transport that attaches it.
type transports struct {
	nvme  *nvme.Transport
	iscsi *iscsi.Transport
}

func newTransports(d Deps) transports {
	return transports{
		nvme:  nvme.New(nvme.Deps{Runner: d.Runner, Root: d.Root, Log: d.Log}),
		iscsi: iscsi.New(iscsi.Deps{Runner: d.Runner, Root: d.Root, Log: d.Log, Lookup: d.Resolve}),
	}
}

func subjectsFor(ctx context.Context, d Deps, tr transports, o Options) ([]*subject, error) {
	switch {
	case o.SR != "":
		a, err := volume.LoadAttached(d.Root, o.SR)
		if err != nil {
			return nil, err
		}
		return []*subject{newSubject(ctx, tr, a.Type, a.UUID, a.Configuration)}, nil
	case o.Type != "":
		if o.Type != TypeNVMeTCP && o.Type != TypeISCSI {
			return nil, host.NewError(host.KindInvalid, "sanvol doctor", fmt.Sprintf("unknown SR type %q", o.Type), "use --type nvmetcp or --type iscsi-ng", nil)
		}
		if strings.TrimSpace(o.Config[nvme.KeyTarget]) == "" {
			return nil, host.NewError(host.KindInvalid, "sanvol doctor", "--type needs the portals", "add --target <portal>,<portal> (the SR's device-config:target)", nil)
		}
		return []*subject{newSubject(ctx, tr, o.Type, "", o.Config)}, nil
	}
	as, err := volume.ListAttached(d.Root)
	if err != nil {
		return nil, err
	}
	var out []*subject
	for _, a := range as {
		out = append(out, newSubject(ctx, tr, a.Type, a.UUID, a.Configuration))
	}
	return out, nil
}

func newSubject(ctx context.Context, tr transports, typ, sr string, cfg map[string]string) *subject {
	s := &subject{Type: typ, SR: sr, Config: cfg}
	if s.Config == nil {
		s.Config = map[string]string{}
	}
	var err error
	if typ == TypeNVMeTCP {
		if s.nvme, err = tr.nvme.ParseConfig(ctx, s.Config); err == nil {
			for _, p := range s.nvme.Portals {
				s.Portals = append(s.Portals, portal{Addr: p.Addr, Port: p.Port})
				s.Bind = append(s.Bind, nonEmpty(p.Iface))
			}
		}
	} else {
		if s.iscsi, err = tr.iscsi.ParseConfig(ctx, s.Config); err == nil {
			for i, p := range s.iscsi.Portals {
				a, perr := netip.ParseAddr(p.Addr)
				if perr != nil {
					err = fmt.Errorf("portal %s: %w", p, perr)
					break
				}
				s.Portals = append(s.Portals, portal{Addr: a, Port: p.Port})
				s.Bind = append(s.Bind, s.iscsi.PortalNICs(i))
			}
		}
	}
	if err != nil {
		s.err, s.errFix = err, "fix the device-config: see docs/nvmetcp.md or docs/iscsi-ng.md"
		var he *host.Error
		if errors.As(err, &he) {
			s.err, s.errFix = errors.New(strings.TrimPrefix(he.Op+": ", ": ")+he.Msg), he.Fix
		}
	}
	return s
}

func nonEmpty(v string) []string {
	if v == "" {
		return nil
	}
	return []string{v}
}
