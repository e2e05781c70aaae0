package volume

import (
	"fmt"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// LVName is the LV that holds the volume with this key; the datapath
// plugin uses it to find the LV from a URI.
func LVName(key string) string { return lvName(key) }

// Usable says whether a volume's LV may be handed to a guest: not while a
// create is still zeroing it (it does not exist yet for xapi), and not
// after a resize died before zeroing the grown part, which could still
// hold another volume's old data.
func Usable(l lvm.LV) error {
	const op = "Datapath.attach"
	// The marks are judged first: they refuse even when damaged, and
	// say why better than "unreadable".
	m, err := decodeVolumeTags(l.Tags)
	if m.Initializing {
		return host.NewError(host.KindNotFound, op, fmt.Sprintf("volume LV %s is still being created", l.Name),
			"wait for xe vdi-create to finish, or rescan the SR (xe sr-scan) if it failed", nil)
	}
	if m.Grow {
		return host.NewError(host.KindBusy, op, fmt.Sprintf("a resize of LV %s did not finish: it is zeroed up to byte %d of %d", l.Name, m.GrowFrom, l.Size),
			"repeat the resize on the pool master (xe vdi-resize uuid=<vdi> disk-size=<size>), then start the VM again", nil)
	}
	if err != nil {
		return host.NewError(host.KindInternal, op, fmt.Sprintf("LV %s has unreadable sanvol tags", l.Name),
			"inspect it with lvs -o+tags; report this as a sanvol bug", err)
	}
	return nil
}
