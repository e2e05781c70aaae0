package nvme

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// pathHealth counts the configured portals whose controller is live.
func pathHealth(c Config, id Identity, ctrls []Controller, failures map[string]error) transport.Health {
	h := transport.Health{ID: c.Namespace.StableID(), Total: len(c.Portals)}
	var bad []string
	for _, p := range c.Portals {
		ctrl, ok := pathFor(ctrls, c, id, p)
		switch {
		case ok && ctrl.State == "live":
			h.Live++
		case ok:
			bad = append(bad, p.String()+" "+ctrl.State)
		case failures[p.String()] != nil:
			bad = append(bad, p.String()+" not connected ("+reason(failures[p.String()])+")")
		default:
			bad = append(bad, p.String()+" not connected")
		}
	}
	h.Detail = fmt.Sprintf("%d of %d paths live", h.Live, h.Total)
	if len(bad) > 0 {
		h.Detail += ": " + strings.Join(bad, ", ")
	}
	return h
}

// shortReason is the kernel's own words for a failed nvme-cli call (its
// first stderr line, "Failed to write to /dev/nvme-fabrics: Connection
// timed out"), or our message when there are none.
func shortReason(err error) string {
	var ee *host.ExitError
	if errors.As(err, &ee) && ee.Stderr != "" {
		line, _, _ := strings.Cut(ee.Stderr, "\n")
		return line
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return devFabrics + ": " + errno.Error()
	}
	return reason(err)
}

func reason(err error) string {
	var he *host.Error
	if errors.As(err, &he) {
		return he.Msg
	}
	return err.Error()
}

// Health reads every configured path's controller state from sysfs.
func (t *Transport) Health(ctx context.Context, cfg map[string]string) (transport.Health, error) {
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true})
	if err != nil {
		return transport.Health{}, err
	}
	id, err := t.identity(ctx, c, false)
	if err != nil {
		return transport.Health{}, err
	}
	ctrls, err := t.sys.controllers()
	if err != nil {
		return transport.Health{}, host.NewError(host.KindInternal, "SR.stat: nvmetcp", "cannot read "+sysClassNVMe, "", err)
	}
	return pathHealth(c, id, ctrls, nil), nil
}
