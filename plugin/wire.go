package plugin

import (
	"io"

	"github.com/sanvol/sanvol/datapath"
	"github.com/sanvol/sanvol/host"
)

// NewDeps wires the real dependencies of a call on this host.
// The log level comes from ConfigPath, read once here.
func NewDeps(version string, stderr io.Writer) *Deps {
	root := host.NewRoot(hostRootDir())
	log := NewLogger(stderr, ReadLogLevel(root) == LogDebug)
	x := host.NewXenAPI(root)
	d := &Deps{
		Version: version,
		Log:     log,
		Root:    root,
		Runner:  host.NewExecRunner(log),
		XenAPI:  x,
		SMAPIv1: x,
		Pool:    x,
	}
	d.Services = func(srType string) (Services, error) { return newServices(d, srType) }
	d.Datapath = func() (*datapath.Datapath, error) { return newDatapath(d) }
	return d
}
