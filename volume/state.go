package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/sanvol/sanvol/host"
)

// StateDir holds one file per SR attached on this host, written by
// SR.attach and removed by SR.detach/SR.destroy. /run is cleared at boot,
// and so is every attachment; xapi re-attaches then.
const StateDir = "/run/sanvol/sr"

// Attached is what SR.attach recorded on this host about an SR. Every
// later call on the SR, and the datapath plugin, starts from it.
type Attached struct {
	Type          string            `json:"type"`
	UUID          string            `json:"uuid"`
	Configuration map[string]string `json:"configuration"`
	// Device is the SR's block device on this host, by a stable path.
	Device string `json:"device"`
	// VG is the name of the SR's volume group.
	VG string `json:"vg"`
	// VGUUID is LVM's uuid of the VG; device-mapper names an active LV
	// "LVM-<vg uuid><lv uuid>" without dashes, which is how SR.detach
	// finds active volumes without reading the metadata.
	VGUUID string `json:"vg_uuid"`
	// ExtentSize in bytes: sizes are rounded up to it.
	ExtentSize int64 `json:"extent_size"`
	// NoWatch is the device's name in NoWatchDir, which SR.detach
	// removes ("" when the device has none, or the record predates it).
	NoWatch string `json:"udev_nowatch,omitempty"`
}

// Handle is the SR handle SR.attach returns: "<type>://<sr-uuid>".
func (a Attached) Handle() string { return MakeHandle(a.Type, a.UUID) }

// MakeHandle builds an SR handle.
func MakeHandle(typ, uuid string) string { return typ + "://" + uuid }

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// IsUUID reports whether s is a textual UUID; SR uuids and volume keys
// become parts of LVM names and file names, so nothing else is accepted.
func IsUUID(s string) bool { return uuidRE.MatchString(s) }

// ParseHandle splits an SR handle into SR type and uuid.
func ParseHandle(sr string) (typ, uuid string, err error) {
	typ, uuid, ok := strings.Cut(sr, "://")
	if !ok || typ == "" || !IsUUID(uuid) {
		return "", "", host.NewError(host.KindInvalid, "SR handle", fmt.Sprintf("%q is not a sanvol SR handle (<type>://<sr-uuid>)", sr), "pass the value SR.attach returned", nil)
	}
	return typ, uuid, nil
}

func statePath(uuid string) string { return path.Join(StateDir, uuid+".json") }

// LoadAttached reads the attach record of an SR on this host. If the SR is
// not attached here the error is host.KindNotAttached.
func LoadAttached(root host.Root, uuid string) (Attached, error) {
	if !IsUUID(uuid) {
		return Attached{}, host.NewError(host.KindInvalid, "SR "+uuid, "not an SR uuid", "", nil)
	}
	b, err := root.ReadFile(statePath(uuid))
	if errors.Is(err, fs.ErrNotExist) {
		return Attached{}, host.NewError(host.KindNotAttached, "SR "+uuid,
			fmt.Sprintf("SR %s is not attached on this host", uuid),
			fmt.Sprintf("plug the PBD (xe pbd-plug uuid=… of SR %s on this host)", uuid), nil)
	}
	if err != nil {
		return Attached{}, host.NewError(host.KindInternal, "SR "+uuid, "cannot read the attach record "+statePath(uuid), "", err)
	}
	var a Attached
	if err := json.Unmarshal(b, &a); err != nil || a.UUID != uuid || a.VG == "" || a.Device == "" {
		if err == nil {
			err = fmt.Errorf("record is incomplete or names another SR")
		}
		return Attached{}, host.NewError(host.KindInternal, "SR "+uuid, "attach record "+statePath(uuid)+" is damaged",
			"unplug and plug the PBD again (xe pbd-unplug/pbd-plug) to rewrite it", err)
	}
	return a, nil
}

// ListAttached reads every attach record on this host, sorted by uuid.
func ListAttached(root host.Root) ([]Attached, error) {
	entries, err := root.ReadDir(StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, host.NewError(host.KindInternal, "list attached SRs", "cannot read "+StateDir, "", err)
	}
	var out []Attached
	for _, e := range entries {
		uuid, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !IsUUID(uuid) {
			continue // temporary files of WriteFileAtomic, strangers
		}
		a, err := LoadAttached(root, uuid)
		if err != nil {
			if host.KindOf(err) == host.KindNotAttached {
				continue // detached meanwhile
			}
			return nil, err
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out, nil
}

func saveAttached(root host.Root, a Attached) error {
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	// 0600: the configuration names targets and secret uuids.
	return root.WriteFileAtomic(statePath(a.UUID), append(b, '\n'), 0o600)
}

func removeAttached(root host.Root, uuid string) error { return root.Remove(statePath(uuid)) }
