package volume

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// Safety rule: a device (WWID, NQN and namespace) that an attach record of
// this host names belongs to that SR. No other SR's call connects it with
// its own settings, flushes, deletes or disconnects it: SR.create and
// SR.attach refuse it before the transport touches anything, and the
// cleanup after a refused or failed call leaves it alone.

// holderOf returns the attached SR whose configuration names the device
// id, if any.
func (e *Engine) holderOf(id string) (*Attached, error) {
	all, err := ListAttached(e.root)
	if err != nil {
		return nil, err
	}
	for _, a := range all {
		if a.Type != e.t.Type() {
			continue
		}
		if aid, err := e.t.DeviceID(a.Configuration); err == nil && aid == id {
			return &a, nil
		}
	}
	return nil, nil
}

// refuseHeld fails op when the device that cfg names is used by an SR
// attached on this host other than uuid. It returns the attach record of
// uuid itself when that SR holds the device (a repeated call).
func (e *Engine) refuseHeld(op, uuid string, cfg map[string]string) (*Attached, error) {
	id, err := e.t.DeviceID(cfg)
	if err != nil {
		return nil, err
	}
	h, err := e.holderOf(id)
	if err != nil {
		return nil, err
	}
	if h == nil || h.UUID == uuid {
		return h, nil
	}
	return nil, host.NewError(host.KindBusy, op,
		fmt.Sprintf("device %s (%s) is in use by SR %s, attached on this host; SR %s must not touch it", id, h.Device, h.UUID, uuid),
		fmt.Sprintf("check the device-config: it names the LUN/namespace of SR %s (xe sr-param-list uuid=%s; xe sr-probe-ext lists the others). "+
			"If that SR really is gone, unplug its PBD (xe pbd-unplug) first", h.UUID, h.UUID), nil)
}

// attachedBesides lists the configurations of the SRs attached on this
// host other than uuid, and names the attached SR that uses the device
// cfg names: another one, or with self also uuid itself.
func (e *Engine) attachedBesides(uuid string, cfg map[string]string, self bool) (others []map[string]string, holder string, err error) {
	all, err := ListAttached(e.root)
	if err != nil {
		return nil, "", err
	}
	id, idErr := e.t.DeviceID(cfg)
	for _, a := range all {
		if a.UUID != uuid {
			others = append(others, a.Configuration)
		}
		if holder != "" || idErr != nil || a.Type != e.t.Type() || (a.UUID == uuid && !self) {
			continue
		}
		if aid, err := e.t.DeviceID(a.Configuration); err == nil && aid == id {
			holder = a.UUID
		}
	}
	return others, holder, nil
}

// release undoes the transport's Attach after a refused or failed
// SR.create or SR.attach of SR uuid, unless an attached SR (this one
// included: a repeated call) uses the device. xapi calls no SR.detach
// after a failed plug, so nothing else would release it.
func (e *Engine) release(ctx context.Context, uuid string, cfg map[string]string) {
	ctx, cancel := host.RollbackContext(ctx, rollbackTimeout)
	defer cancel()
	if _, err := e.t.DeviceID(cfg); err != nil {
		return // Attach refuses the same configuration before connecting
	}
	others, holder, err := e.attachedBesides(uuid, cfg, true)
	if err != nil {
		e.log.Warn("cannot list attached SRs; leaving the device connected", zap.Error(err))
		return
	}
	if holder != "" {
		e.log.Info("the device is in use by an attached SR; leaving it connected", zap.String("sr", uuid), zap.String("holder", holder))
		return
	}
	if err := e.t.Detach(ctx, cfg, others); err != nil {
		e.log.Warn("could not release the device", zap.String("sr", uuid), zap.Error(err))
	}
}

// resolved checks the device of an attach record with the transport (a
// kernel name like /dev/nvme1n1 can name another namespace after a
// reconnect) and records the path it returns if it changed, so that
// records of older versions are migrated once.
func (e *Engine) resolved(ctx context.Context, a Attached) (Attached, error) {
	r, ok := e.t.(transport.DeviceResolver)
	if !ok {
		return a, nil
	}
	dev, err := r.ResolveDevice(ctx, a.Configuration, a.Device)
	if err != nil {
		return Attached{}, err
	}
	if dev != a.Device {
		e.log.Info("the SR's device path changed; updating the attach record", zap.String("sr", a.UUID), zap.String("was", a.Device), zap.String("now", dev))
		a.Device = dev
		if err := saveAttached(e.root, a); err != nil {
			e.log.Warn("cannot update the attach record", zap.String("sr", a.UUID), zap.Error(err))
		}
	}
	return a, nil
}
