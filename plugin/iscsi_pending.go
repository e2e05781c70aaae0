package plugin

import (
	"context"

	"sanvol/host"
	"sanvol/volume"
)

// pendingTransport stands in for the iSCSI transport until it is built:
// every call says so clearly, and Plugin.query declares no feature.
type pendingTransport struct{ srType string }

func newISCSI(*Deps) volume.Transport { return pendingTransport{srType: TypeISCSI} }

func (p pendingTransport) err(op string) error {
	return host.Errorf(host.KindUnimpl, op, "the "+p.srType+" transport is not built in this sanvol version yet",
		"use type=nvmetcp, or upgrade sanvol; see the status table in the README", nil)
}

func (p pendingTransport) Type() string                  { return p.srType }
func (p pendingTransport) ConfigKeys() map[string]string { return map[string]string{} }
func (p pendingTransport) Prepare(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	return nil, p.err("SR.create")
}
func (p pendingTransport) Attach(ctx context.Context, cfg map[string]string) (volume.Device, error) {
	return volume.Device{}, p.err("SR.attach")
}
func (p pendingTransport) Detach(ctx context.Context, cfg map[string]string, others []map[string]string) error {
	return p.err("SR.detach")
}
func (p pendingTransport) Health(ctx context.Context, cfg map[string]string) (volume.Health, error) {
	return volume.Health{}, p.err("SR.stat")
}
func (p pendingTransport) Probe(ctx context.Context, cfg map[string]string, inspect volume.Inspector) ([]volume.Candidate, error) {
	return nil, p.err("SR.probe")
}
func (p pendingTransport) Diagnostics(ctx context.Context) string {
	return "the " + p.srType + " transport is not built yet\n"
}
