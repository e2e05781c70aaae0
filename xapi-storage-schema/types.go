package schema

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Volume is a VDI as the plugin reports it (spec §5.2).
type Volume struct {
	Key                 string            `json:"key"`
	UUID                string            `json:"uuid,omitempty"`
	Name                string            `json:"name"`
	Description         string            `json:"description"`
	ReadWrite           bool              `json:"read_write"`
	Sharable            bool              `json:"sharable"`
	VirtualSize         int64             `json:"virtual_size"`
	PhysicalUtilisation int64             `json:"physical_utilisation"`
	URI                 []string          `json:"uri"`
	Keys                map[string]string `json:"keys"`
}

// MarshalJSON guarantees [] and {} instead of null.
func (v Volume) MarshalJSON() ([]byte, error) {
	type plain Volume
	if v.URI == nil {
		v.URI = []string{}
	}
	if v.Keys == nil {
		v.Keys = map[string]string{}
	}
	return json.Marshal(plain(v))
}

// HealthState is the constructor of the health variant. Unreachable and
// Unavailable exist from xen-api v24.18 (ocaml/xapi-storage/generator/lib/
// control.ml, commit 2a018d785c): an older daemon fails to decode them.
type HealthState string

// Health constructors: Healthy and Recovering of the base IDL, the other
// two of IDL v24.18+.
const (
	Healthy     HealthState = "Healthy"
	Recovering  HealthState = "Recovering"
	Unreachable HealthState = "Unreachable"
	Unavailable HealthState = "Unavailable"
)

// Health is the SR health variant, encoded as ["Healthy", "msg"].
type Health struct {
	State   HealthState
	Message string
}

// MarshalJSON encodes the variant.
func (h Health) MarshalJSON() ([]byte, error) {
	s := h.State
	if s == "" {
		s = Healthy
	}
	return json.Marshal([]string{string(s), h.Message})
}

// UnmarshalJSON decodes the variant, matching the name case-insensitively
// as rpclib does.
func (h *Health) UnmarshalJSON(b []byte) error {
	var arr []string
	if err := json.Unmarshal(b, &arr); err != nil || len(arr) != 2 {
		return fmt.Errorf("health: expected [\"Name\", \"message\"], got %s", b)
	}
	for _, c := range []HealthState{Healthy, Recovering, Unreachable, Unavailable} {
		if strings.EqualFold(arr[0], string(c)) {
			h.State, h.Message = c, arr[1]
			return nil
		}
	}
	return fmt.Errorf("health: unknown constructor %q", arr[0])
}

// SRStat is the result of SR.stat (spec §5.3).
type SRStat struct {
	SR          string   `json:"sr"`
	Name        string   `json:"name"`
	UUID        string   `json:"uuid,omitempty"`
	Description string   `json:"description"`
	FreeSpace   int64    `json:"free_space"`
	TotalSpace  int64    `json:"total_space"`
	Datasources []string `json:"datasources"`
	Clustered   bool     `json:"clustered"`
	Health      Health   `json:"health"`
}

// MarshalJSON guarantees [] instead of null.
func (s SRStat) MarshalJSON() ([]byte, error) {
	type plain SRStat
	if s.Datasources == nil {
		s.Datasources = []string{}
	}
	return json.Marshal(plain(s))
}

// ProbeResult is one element of SR.probe's result (spec §5.4).
type ProbeResult struct {
	Configuration map[string]string `json:"configuration"`
	Complete      bool              `json:"complete"`
	SR            *SRStat           `json:"sr,omitempty"`
	ExtraInfo     map[string]string `json:"extra_info"`
}

// MarshalJSON guarantees {} instead of null.
func (p ProbeResult) MarshalJSON() ([]byte, error) {
	type plain ProbeResult
	if p.Configuration == nil {
		p.Configuration = map[string]string{}
	}
	if p.ExtraInfo == nil {
		p.ExtraInfo = map[string]string{}
	}
	return json.Marshal(plain(p))
}

// Check applies the daemon's consistency rules (spec §5.4); a result that
// breaks them turns the whole probe into SCRIPT_FAILED.
func (p ProbeResult) Check() error {
	_, hasUUID := p.Configuration["sr_uuid"]
	if hasUUID && !p.Complete {
		return fmt.Errorf("probe result has sr_uuid but complete=false")
	}
	if p.SR != nil && !hasUUID {
		return fmt.Errorf("probe result has sr but no sr_uuid in configuration")
	}
	return nil
}

// QueryResult is Plugin.query's result (spec §5.5).
type QueryResult struct {
	Plugin               string            `json:"plugin"`
	Name                 string            `json:"name"`
	Description          string            `json:"description"`
	Vendor               string            `json:"vendor"`
	Copyright            string            `json:"copyright"`
	Version              string            `json:"version"`
	RequiredAPIVersion   string            `json:"required_api_version"`
	Features             []string          `json:"features"`
	Configuration        map[string]string `json:"configuration"`
	RequiredClusterStack []string          `json:"required_cluster_stack"`
}

// MarshalJSON guarantees [] and {} instead of null.
func (q QueryResult) MarshalJSON() ([]byte, error) {
	type plain QueryResult
	if q.Features == nil {
		q.Features = []string{}
	}
	if q.Configuration == nil {
		q.Configuration = map[string]string{}
	}
	if q.RequiredClusterStack == nil {
		q.RequiredClusterStack = []string{}
	}
	return json.Marshal(plain(q))
}

// XenDisk is the implementation blkback/tapdisk/qemu consume.
type XenDisk struct {
	Params      string            `json:"params"`
	Extra       map[string]string `json:"extra"`
	BackendType string            `json:"backend_type"`
}

// Implementation is one way to reach a volume's data (spec §5.6). Exactly
// one field is set.
type Implementation struct {
	XenDisk     *XenDisk
	BlockDevice string // path
	File        string // path
	Nbd         string // uri
}

// MarshalJSON encodes the variant ["Name", {…}].
func (i Implementation) MarshalJSON() ([]byte, error) {
	switch {
	case i.XenDisk != nil:
		x := *i.XenDisk
		if x.Extra == nil {
			x.Extra = map[string]string{}
		}
		return json.Marshal([]any{"XenDisk", x})
	case i.BlockDevice != "":
		return json.Marshal([]any{"BlockDevice", map[string]string{"path": i.BlockDevice}})
	case i.File != "":
		return json.Marshal([]any{"File", map[string]string{"path": i.File}})
	case i.Nbd != "":
		return json.Marshal([]any{"Nbd", map[string]string{"uri": i.Nbd}})
	}
	return nil, fmt.Errorf("implementation: no variant set")
}

// UnmarshalJSON decodes the variant (used by tests and the simulator).
func (i *Implementation) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 2 {
		return fmt.Errorf("implementation: expected [\"Name\", {…}], got %s", b)
	}
	var name string
	if err := json.Unmarshal(raw[0], &name); err != nil {
		return err
	}
	var m map[string]json.RawMessage
	switch strings.ToLower(name) {
	case "xendisk":
		i.XenDisk = &XenDisk{}
		return json.Unmarshal(raw[1], i.XenDisk)
	case "blockdevice", "file", "nbd":
		if err := json.Unmarshal(raw[1], &m); err != nil {
			return err
		}
		var s string
		key := map[string]string{"blockdevice": "path", "file": "path", "nbd": "uri"}[strings.ToLower(name)]
		if err := json.Unmarshal(m[key], &s); err != nil {
			return fmt.Errorf("implementation %s: %w", name, err)
		}
		switch strings.ToLower(name) {
		case "blockdevice":
			i.BlockDevice = s
		case "file":
			i.File = s
		default:
			i.Nbd = s
		}
		return nil
	}
	return fmt.Errorf("implementation: unknown constructor %q", name)
}

// Backend is Datapath.attach's result.
type Backend struct {
	Implementations []Implementation `json:"implementations"`
}

// MarshalJSON guarantees [] instead of null.
func (b Backend) MarshalJSON() ([]byte, error) {
	type plain Backend
	if b.Implementations == nil {
		b.Implementations = []Implementation{}
	}
	return json.Marshal(plain(b))
}

// Backtrace is the mandatory backtrace of an error document.
type Backtrace struct {
	Error string   `json:"error"`
	Files []string `json:"files"`
	Lines []int    `json:"lines"`
}

// ErrorDoc is what a failing method prints on stdout (spec §3.3). Every
// key is mandatory; a missing one turns the error into SCRIPT_FAILED.
type ErrorDoc struct {
	Code      string    `json:"code"`
	Params    []string  `json:"params"`
	Backtrace Backtrace `json:"backtrace"`
}

// MarshalJSON guarantees [] instead of null everywhere.
func (e ErrorDoc) MarshalJSON() ([]byte, error) {
	type plain ErrorDoc
	if e.Params == nil {
		e.Params = []string{}
	}
	if e.Backtrace.Files == nil {
		e.Backtrace.Files = []string{}
	}
	if e.Backtrace.Lines == nil {
		e.Backtrace.Lines = []int{}
	}
	return json.Marshal(plain(e))
}
