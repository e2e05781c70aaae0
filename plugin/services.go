package plugin

import (
	"context"
	"fmt"

	"sanvol/host"
)

// srServices serves one SR type on this host.
type srServices struct {
	deps   *Deps
	srType string
}

func newServices(d *Deps, srType string) (Services, error) {
	switch srType {
	case TypeNVMeTCP, TypeISCSI:
		return &srServices{deps: d, srType: srType}, nil
	}
	return nil, host.Errorf(host.KindInvalid, "", fmt.Sprintf("unknown SR type %q", srType), "use nvmetcp or iscsi-ng", nil)
}

func (s *srServices) Describe() Description {
	switch s.srType {
	case TypeNVMeTCP:
		return Description{
			Name:        "sanvol NVMe/TCP shared SR",
			Description: "Shared SR on an NVMe/TCP namespace with native NVMe multipath; every VDI is an LVM logical volume.",
		}
	default:
		return Description{
			Name:        "sanvol iSCSI shared SR",
			Description: "Shared SR on an iSCSI LUN with dm-multipath; every VDI is an LVM logical volume.",
		}
	}
}

func (s *srServices) Diagnostics(ctx context.Context) string {
	return "transport diagnostics are not built yet\n"
}
