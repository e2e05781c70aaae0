package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/volume"
)

// HostPlugins is the part of XenAPI the control channel uses
// (host.XenAPI): where a volume is active, and a host plugin call there.
type HostPlugins interface {
	ActiveHost(ctx context.Context, srUUID, key string) (string, error)
	CallPlugin(ctx context.Context, hostUUID, name, fn string, args map[string]string) (string, error)
}

// Remote is the engine's way to the other hosts of the pool
// (volume.Remote): sanvol's host plugin there, called through xapi.
type Remote struct {
	X HostPlugins
	// Self is this host's XenAPI uuid (the inventory's
	// INSTALLATION_UUID): a volume active here is the engine's own.
	Self string
	// Poll is the pause between two wait_merged calls; 0 means none
	// (each call waits on the host itself).
	Poll time.Duration
}

// NewRemote is the control channel through the local xapi.
func NewRemote(root host.Root) *Remote {
	return &Remote{X: host.NewXenAPI(root), Self: host.ReadInventory(root)["INSTALLATION_UUID"]}
}

// ActiveHost implements volume.Remote.
func (r *Remote) ActiveHost(ctx context.Context, sr, key string) (string, error) {
	h, err := r.X.ActiveHost(ctx, sr, key)
	if err != nil || h == r.Self {
		return "", err
	}
	return h, nil
}

// call runs one host plugin function on h and turns the error document
// the plugin answered (ServeHostPlugin) back into a typed error.
func (r *Remote) call(ctx context.Context, h, fn string, args map[string]string) (string, error) {
	out, err := r.X.CallPlugin(ctx, h, host.HostPluginName, fn, args)
	var xe *host.XenAPIError
	if errors.As(err, &xe) {
		op := fmt.Sprintf("host plugin %s on host %s", fn, h)
		if xe.Code == ErrorCode && len(xe.Params) >= 2 {
			return "", host.NewError(host.Kind(xe.Params[0]), op, xe.Params[1], "", nil)
		}
		// xapi_plugins.ml call_plugin: no such plugin on that host, or
		// it died (a signal, a non-zero exit, no answer).
		if xe.Code == "XENAPI_MISSING_PLUGIN" {
			return "", host.NewError(host.KindUnreachable, op, "sanvol's host plugin is not installed there",
				"install the same sanvol version on every host of the pool (sanvol install; ls "+host.HostPluginDir+")", err)
		}
		return "", host.NewError(host.KindUnreachable, op, "the host plugin died before it answered",
			"see that host's log (journalctl -t sanvol); the step stays recorded and the next snapshot or delete of the volume finishes it", err)
	}
	return out, err
}

// Converge implements volume.Remote.
func (r *Remote) Converge(ctx context.Context, h string, rc volume.RemoteChain) (bool, error) {
	out, err := r.call(ctx, h, HostFnConverge, rc.Args())
	if err != nil {
		return false, err
	}
	switch out {
	case "live":
		return true, nil
	case "absent":
		return false, nil
	}
	return false, host.NewError(host.KindInternal, "host plugin converge on host "+h, fmt.Sprintf("unexpected answer %q", out), "", nil)
}

// WaitMerged implements volume.Remote: wait_merged again and again, each
// call waiting up to hostFnWait on the host, until it reports the merge
// done.
func (r *Remote) WaitMerged(ctx context.Context, h string, rc volume.RemoteChain) error {
	args := rc.Args()
	args["wait"] = fmt.Sprint(int(hostFnWait / time.Second))
	return host.Poll(ctx, max(r.Poll, time.Millisecond), func(ctx context.Context) (bool, error) {
		out, err := r.call(ctx, h, HostFnWaitMerged, args)
		if err != nil {
			return false, err
		}
		switch volume.MergeState(out) {
		case volume.MergeDone:
			return true, nil
		case volume.MergeRunning:
			return false, nil
		case volume.MergeAbsent:
			return false, host.NewError(host.KindBusy, "merge on host "+h, "the volume left that host while it merged",
				"retry: the merge resumes from the tags where the volume is active now", nil)
		}
		return false, host.NewError(host.KindInternal, "host plugin wait_merged on host "+h, fmt.Sprintf("unexpected answer %q", out), "", nil)
	})
}
