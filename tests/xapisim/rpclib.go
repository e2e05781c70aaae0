package xapisim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/plugin"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// The daemon does not read a method's stdout as loosely as encoding/json:
// its generated client unmarshals the result into the IDL's typed record
// (rpclib's Rpcmarshal.unmarshal, called from Idl.GenClient), and a result
// that does not fit raises Idl.MarshalError, which main.ml's return_rpc
// turns into SCRIPT_FAILED ["Unexpected exception:…"]. This file replays
// that unmarshal for the result of every method the simulator calls. The
// rules, from mirage/ocaml-rpc src/lib/rpcmarshal.ml (unmarshal) and
// ppx/ppx_deriving_rpcty.ml, and the types from xen-api
// ocaml/xapi-storage/generator/lib/{control,data,plugin}.ml:
//   - a record needs every field that is neither an option nor [@default];
//     field names match case-insensitively; extra fields are ignored;
//   - an option field may be absent, but when present (null included) it
//     must have the inner type;
//   - a [@default] field that does not unmarshal takes its default;
//   - int64 accepts a JSON integer or a string holding one, never a
//     float; bool only true/false; string only a string; unit only null;
//   - a variant is "Tag" or ["Tag", contents], the tag matched without
//     case, an unknown tag an error.

type rtype interface {
	unmarshal(v any) error
}

type (
	rString  struct{}
	rInt64   struct{}
	rBool    struct{}
	rUnit    struct{}
	rList    struct{ elem rtype }
	rDict    struct{ elem rtype } // (string * t) list and string-keyed maps: a JSON object
	rVariant struct{ cases map[string]rtype }
	rField   struct {
		name     string
		t        rtype
		optional bool // t option: may be absent
		deflt    bool // [@default …]: anything that fails becomes the default
	}
	rStruct struct {
		name   string
		fields []rField
	}
)

// marshalError is one of rpclib's messages, kept verbatim (capitalised
// as rpclib writes them) since the daemon passes them on to xapi.
type marshalError string

func (e marshalError) Error() string { return string(e) }

func merr(format string, a ...any) error { return marshalError(fmt.Sprintf(format, a...)) }

func rpcString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func (rString) unmarshal(v any) error {
	if _, ok := v.(string); !ok {
		return merr("Expected string, got '%s'", rpcString(v))
	}
	return nil
}

func (rInt64) unmarshal(v any) error {
	switch x := v.(type) {
	case json.Number:
		if _, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return nil
		}
	case string:
		if _, err := strconv.ParseInt(x, 0, 64); err == nil {
			return nil
		}
		return merr("Expected int64, got string '%s'", x)
	}
	return merr("Expected int64, got '%s'", rpcString(v))
}

func (rBool) unmarshal(v any) error {
	if _, ok := v.(bool); !ok {
		return merr("Expected bool, got '%s'", rpcString(v))
	}
	return nil
}

func (rUnit) unmarshal(v any) error {
	if v != nil {
		return merr("Expected unit, got '%s'", rpcString(v))
	}
	return nil
}

func (l rList) unmarshal(v any) error {
	xs, ok := v.([]any)
	if !ok {
		return merr("Expecting array")
	}
	for _, x := range xs {
		if err := l.elem.unmarshal(x); err != nil {
			return merr("Failed to unmarshal array: %s (when unmarshalling: %s)", err, rpcString(x))
		}
	}
	return nil
}

func (d rDict) unmarshal(v any) error {
	m, ok := v.(map[string]any)
	if !ok {
		return merr("Unhandled")
	}
	for _, x := range m {
		if err := d.elem.unmarshal(x); err != nil {
			return merr("Failed to unmarshal array: %s (when unmarshalling: %s)", err, rpcString(x))
		}
	}
	return nil
}

func (s rStruct) unmarshal(v any) error {
	m, ok := v.(map[string]any)
	if !ok {
		return merr("Expecting Rpc.Dict when unmarshalling a '%s'", s.name)
	}
	lower := make(map[string]any, len(m))
	for k, x := range m {
		lower[strings.ToLower(k)] = x
	}
	for _, f := range s.fields {
		x, present := lower[f.name]
		var err error
		switch {
		case !present && (f.optional || f.deflt):
			continue
		case !present:
			err = merr("No value found for key: '%s' when unmarshalling '%s'", f.name, s.name)
		default:
			err = f.t.unmarshal(x)
		}
		if err != nil && !f.deflt {
			return err
		}
	}
	return nil
}

func (r rVariant) unmarshal(v any) error {
	var name string
	var contents any
	switch x := v.(type) {
	case string:
		name = x
	case []any:
		if len(x) != 2 {
			return merr("Expecting String or Enum when unmarshalling a variant")
		}
		s, ok := x[0].(string)
		if !ok {
			return merr("Expecting String or Enum when unmarshalling a variant")
		}
		name, contents = s, x[1]
	default:
		return merr("Expecting String or Enum when unmarshalling a variant")
	}
	t, ok := r.cases[strings.ToLower(name)]
	if !ok {
		return merr("Unknown tag '%s'", strings.ToLower(name))
	}
	return t.unmarshal(contents)
}

// The xapi-storage IDL's result types.
var (
	tStringList = rList{rString{}}
	tStringMap  = rDict{rString{}}

	// health lost Unreachable and Unavailable before CP-49448 (2024), so
	// an older daemon fails a SR.stat that returns them.
	healthCurrent = rVariant{cases: map[string]rtype{
		"healthy": rString{}, "recovering": rString{}, "unreachable": rString{}, "unavailable": rString{},
	}}
	healthOld = rVariant{cases: map[string]rtype{"healthy": rString{}, "recovering": rString{}}}

	tQueryResult = rStruct{name: "query_result", fields: []rField{
		{name: "plugin", t: rString{}}, {name: "name", t: rString{}}, {name: "description", t: rString{}},
		{name: "vendor", t: rString{}}, {name: "copyright", t: rString{}}, {name: "version", t: rString{}},
		{name: "required_api_version", t: rString{}}, {name: "features", t: tStringList},
		{name: "configuration", t: tStringMap}, {name: "required_cluster_stack", t: tStringList},
	}}
	tVolume = rStruct{name: "volume", fields: []rField{
		{name: "key", t: rString{}}, {name: "uuid", t: rString{}, optional: true},
		{name: "name", t: rString{}}, {name: "description", t: rString{}},
		{name: "read_write", t: rBool{}}, {name: "sharable", t: rBool{}},
		{name: "virtual_size", t: rInt64{}}, {name: "physical_utilisation", t: rInt64{}},
		{name: "uri", t: tStringList}, {name: "keys", t: tStringMap},
		{name: "volume_type", t: rVariant{cases: map[string]rtype{"data": rUnit{}, "cbt_metadata": rUnit{}, "data_and_cbt_metadata": rUnit{}}}, deflt: true}, {name: "cbt_enabled", t: rBool{}, deflt: true},
	}}
	tBackend = rStruct{name: "backend", fields: []rField{{name: "implementations", t: rList{rVariant{cases: map[string]rtype{
		"xendisk": rStruct{name: "xendisk", fields: []rField{
			{name: "params", t: rString{}}, {name: "extra", t: tStringMap}, {name: "backend_type", t: rString{}},
		}},
		"blockdevice": rStruct{name: "block_device", fields: []rField{{name: "path", t: rString{}}}},
		"file":        rStruct{name: "file", fields: []rField{{name: "path", t: rString{}}}},
		"nbd":         rStruct{name: "nbd", fields: []rField{{name: "uri", t: rString{}}}},
	}}}}}}
)

func srStatType(health rtype) rStruct {
	return rStruct{name: "sr_stat", fields: []rField{
		{name: "sr", t: rString{}}, {name: "name", t: rString{}}, {name: "uuid", t: rString{}, optional: true},
		{name: "description", t: rString{}}, {name: "free_space", t: rInt64{}}, {name: "total_space", t: rInt64{}},
		{name: "datasources", t: tStringList}, {name: "clustered", t: rBool{}}, {name: "health", t: health},
	}}
}

// resultType is the IDL type of a method's result, or nil for a method the
// simulator does not know (its result is then not checked).
func resultType(method string, oldDaemon bool) rtype {
	health := rtype(healthCurrent)
	if oldDaemon {
		health = healthOld
	}
	switch method {
	case "Plugin.Query":
		return tQueryResult
	case "Plugin.diagnostics", "SR.attach":
		return rString{}
	case "SR.create":
		return tStringMap
	case "SR.stat":
		return srStatType(health)
	case "SR.ls":
		return rList{tVolume}
	case "SR.probe":
		return rList{rStruct{name: "probe_result", fields: []rField{
			{name: "configuration", t: tStringMap}, {name: "complete", t: rBool{}},
			{name: "sr", t: srStatType(health), optional: true}, {name: "extra_info", t: tStringMap},
		}}}
	case "Volume.create", "Volume.clone", "Volume.snapshot", "Volume.stat":
		return tVolume
	case "Datapath.attach":
		return tBackend
	case "SR.detach", "SR.destroy", "SR.set_name", "SR.set_description",
		"Volume.set", "Volume.unset", "Volume.resize", "Volume.destroy", "Volume.set_name", "Volume.set_description",
		"Datapath.open", "Datapath.activate", "Datapath.deactivate", "Datapath.detach", "Datapath.close":
		return rUnit{}
	}
	return nil
}

// checkResult unmarshals raw as the daemon's client would and fails the
// way main.ml's return_rpc reports an Idl.MarshalError.
func checkResult(method, script string, raw json.RawMessage, oldDaemon bool) error {
	t := resultType(method, oldDaemon)
	if t == nil {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	if err == nil {
		err = t.unmarshal(v)
	}
	if err == nil {
		return nil
	}
	return &plugin.CallError{Script: script, Doc: schema.ErrorDoc{
		Code:   "SCRIPT_FAILED",
		Params: []string{fmt.Sprintf("Unexpected exception:(Idl.MarshalError %q)", err.Error())},
	}}
}
