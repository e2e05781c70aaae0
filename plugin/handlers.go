package plugin

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"

	"go.uber.org/zap"

	"sanvol/host"
	schema "sanvol/xapi-storage-schema"
)

// Deps are the real or fake dependencies a call is served with. main
// builds the real ones (wire.go); tests build fakes.
type Deps struct {
	Version string
	Log     *zap.Logger
	Root    host.Root
	Runner  host.Runner
	// Services builds what serves the SR and Volume methods of an SR type
	// and the datapath methods. Built lazily: Plugin.Query must not pay
	// for connecting to XenAPI or probing the kernel.
	Services func(srType string) (Services, error)
}

// Services is what the SR, Volume and Datapath methods are served by.
type Services interface {
	// Describe says what the SR type is and which device-config keys it
	// takes, for Plugin.query.
	Describe() Description
	// Diagnostics dumps the state of this host for bug reports.
	Diagnostics(ctx context.Context) string
}

// Description is the per-SR-type part of Plugin.query.
type Description struct {
	Name          string
	Description   string
	Features      []string
	Configuration map[string]string
}

const (
	vendor    = "sanvol"
	copyright = "Copyright the sanvol authors; licensed under the Apache License 2.0"
)

func pluginQuery(ctx context.Context, c *Call) (any, error) {
	q := schema.QueryResult{
		Vendor:               vendor,
		Copyright:            copyright,
		Version:              c.Deps.Version,
		RequiredAPIVersion:   "5.0",
		Features:             []string{},
		Configuration:        map[string]string{},
		RequiredClusterStack: []string{},
	}
	if c.Target.Kind == DatapathPlugin {
		q.Plugin = DatapathScheme
		q.Name = "sanvol datapath"
		q.Description = "Hands sanvol volumes (LVM logical volumes on a shared LUN or namespace) to guests through kernel blkback."
		return q, nil
	}
	q.Plugin = c.Target.SRType
	svc, err := c.Deps.Services(c.Target.SRType)
	if err != nil {
		return nil, err
	}
	d := svc.Describe()
	q.Name, q.Description = d.Name, d.Description
	q.Features = append(q.Features, d.Features...)
	for k, v := range d.Configuration {
		q.Configuration[k] = v
	}
	return q, nil
}

func pluginDiagnostics(ctx context.Context, c *Call) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "sanvol %s (%s, %s/%s)\n", c.Deps.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	hn, _ := os.Hostname()
	fmt.Fprintf(&b, "host: %s\n", hn)
	if role, err := host.ReadRole(c.Deps.Root); err == nil {
		fmt.Fprintf(&b, "pool role: %s\n", role)
	} else {
		fmt.Fprintf(&b, "pool role: unknown (%v)\n", err)
	}
	if k, err := c.Deps.Root.ReadString("/proc/sys/kernel/osrelease"); err == nil {
		fmt.Fprintf(&b, "kernel: %s\n", k)
	}
	types := SRTypes()
	if c.Target.Kind == VolumePlugin {
		types = []string{c.Target.SRType}
	}
	sort.Strings(types)
	for _, t := range types {
		svc, err := c.Deps.Services(t)
		if err != nil {
			fmt.Fprintf(&b, "\n== %s: unavailable: %v\n", t, err)
			continue
		}
		fmt.Fprintf(&b, "\n== %s\n%s", t, svc.Diagnostics(ctx))
	}
	return b.String(), nil
}

var (
	srProbe              = unimplemented
	srCreate             = unimplemented
	srAttach             = unimplemented
	srDetach             = unimplemented
	srDestroy            = unimplemented
	srStat               = unimplemented
	srLs                 = unimplemented
	srSetName            = unimplemented
	srSetDescription     = unimplemented
	volumeCreate         = unimplemented
	volumeDestroy        = unimplemented
	volumeResize         = unimplemented
	volumeStat           = unimplemented
	volumeSet            = unimplemented
	volumeUnset          = unimplemented
	volumeSetName        = unimplemented
	volumeSetDescription = unimplemented
	datapathOpen         = unimplemented
	datapathAttach       = unimplemented
	datapathActivate     = unimplemented
	datapathDeactivate   = unimplemented
	datapathDetach       = unimplemented
	datapathClose        = unimplemented
)
