package plugin

import (
	"io"

	"sanvol/host"
)

// NewDeps wires the real dependencies of a call on this host.
func NewDeps(version string, stderr io.Writer, verbose bool) *Deps {
	log := NewLogger(stderr, verbose)
	root := host.NewRoot("/")
	d := &Deps{
		Version: version,
		Log:     log,
		Root:    root,
		Runner:  host.NewExecRunner(log),
	}
	d.Services = func(srType string) (Services, error) { return newServices(d, srType) }
	return d
}
