package iscsi

import (
	"context"
	"fmt"
	"strings"

	"github.com/sanvol/sanvol/host"
)

// Diagnostics describes the transport's state on this host: tool versions,
// the initiator name, every iSCSI session with its disks, every multipath
// map with the kernel's view of its paths and table, sanvol's multipath
// drop-in and the sessions each attached SR planned.
func (t *Transport) Diagnostics(ctx context.Context) string {
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }

	line("== iscsi-ng")
	line("kernel: %s", host.KernelRelease(t.root))
	line("iscsiadm: %s", t.toolVersion(ctx, "iscsiadm", "--version"))
	line("multipath: %s", t.toolVersion(ctx, "multipath", "-h"))
	if iqn, err := t.initiatorName("diagnostics"); err == nil {
		line("initiator: %s", iqn)
	} else {
		line("initiator: %v", err)
	}

	line("\n== sessions (sysfs)")
	sessions, err := t.sys.sessions()
	if err != nil {
		line("cannot read: %v", err)
	}
	if len(sessions) == 0 {
		line("none")
	}
	for _, s := range sessions {
		line("session %d: %s at %s tpgt %d iface %s state %s recovery_tmo %d host%d",
			s.sid, s.target, s.portal, s.tpgt, ifaceOf(s), s.state, s.recoveryTmo, s.host)
		for _, d := range s.disks {
			line("  %s %s lun %d wwid %s %s %s %s %d bytes holders [%s]",
				d.name, d.hctl, d.lun, d.wwid, d.state, d.vendor, d.model, d.size, strings.Join(d.holders, " "))
		}
	}

	line("\n== multipath maps")
	maps, err := t.sys.maps()
	if err != nil {
		line("cannot read: %v", err)
	}
	if len(maps) == 0 {
		line("none")
	}
	for _, m := range maps {
		line("%s %s wwid %s %d bytes slaves [%s] holders [%s] suspended %v",
			m.dev, m.name, m.wwid, m.size, strings.Join(m.slaves, " "), strings.Join(m.holders, " "), m.suspended)
		for _, what := range []string{"status", "table"} {
			res, err := t.run.Run(ctx, host.Cmd{Name: "dmsetup", Args: []string{what, m.name}, Timeout: t.to.Command})
			if err != nil {
				line("  dmsetup %s: %v", what, err)
				continue
			}
			line("  %s: %s", what, strings.TrimSpace(string(res.Stdout)))
		}
	}
	if out, err := t.multipathd(ctx, "show paths"); err == nil {
		line("\n== multipathd show paths\n%s", out)
	} else {
		line("\n== multipathd show paths: %v", err)
	}

	line("\n== %s", DropInPath)
	if b2, err := t.root.ReadFile(DropInPath); err == nil {
		b.Write(b2)
	} else {
		line("none (%v)", err)
	}

	line("\n== attach records (%s)", stateDir)
	recs, _ := t.root.Glob(stateDir + "/*.json")
	if len(recs) == 0 {
		line("none")
	}
	for _, r := range recs {
		data, err := t.root.ReadFile(r)
		if err != nil {
			continue
		}
		line("%s: %s", r, strings.TrimSpace(string(data)))
	}
	return b.String()
}

// toolVersion returns the first line that names a version. Old multipath
// prints its version on `-h` with exit status 1, so failures are read too.
func (t *Transport) toolVersion(ctx context.Context, name string, args ...string) string {
	res, err := t.run.Run(ctx, host.Cmd{Name: name, Args: args, Timeout: t.to.Command})
	text := string(res.Stdout) + "\n" + string(res.Stderr)
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "version") || strings.HasPrefix(l, "multipath-tools") {
			return l
		}
	}
	if err != nil {
		return err.Error()
	}
	return "unknown"
}
