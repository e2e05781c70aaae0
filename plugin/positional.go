package plugin

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// StaticVDIsMethods are the methods that static-vdis runs with positional
// arguments instead of `--json` (xen-api python3/bin/static-vdis:
// check_clusterstack → Plugin.Query, sr_attach → SR.attach, add →
// Volume.stat, attach → Datapath.attach and Datapath.activate, detach →
// Datapath.deactivate and Datapath.detach). It attaches the HA statefile
// and redo log with them at boot, before xapi runs, and when HA is
// enabled (xapi_ha.ml, attach_statefiles and attach_metadata_vdi, through
// static_vdis.ml, permanent_vdi_attach). No other method takes that form.
var StaticVDIsMethods = []string{
	"Plugin.Query", "SR.attach", "Volume.stat",
	"Datapath.attach", "Datapath.activate", "Datapath.deactivate", "Datapath.detach",
}

func takesPositional(method string) bool {
	for _, m := range StaticVDIsMethods {
		if strings.EqualFold(m, method) {
			return true
		}
	}
	return false
}

// DecodePositional reads the command-line form of a call, as the Python
// bindings' argparse parser for the method takes it (the form static-vdis
// uses): the string arguments positionally in declaration order, dbg
// first, and each dict argument as repeated `--<name> <key> <value>`
// triples (xapi-storage python xapi/__init__.py, ListAction: a repeated
// key keeps the last value). It checks what DecodeArgs checks and fails
// with the same kind of error.
func DecodePositional(method string, argv []string, specs []argSpec) (Args, error) {
	args := Args{strs: map[string]string{}, ints: map[string]int64{}, bools: map[string]bool{}, dicts: map[string]map[string]string{}}
	var positional []argSpec
	dicts := map[string]bool{}
	for _, s := range specs {
		switch s.Type {
		case tString:
			positional = append(positional, s)
		case tDict:
			dicts[s.Name] = true
			args.dicts[s.Name] = map[string]string{}
		default:
			// No method static-vdis calls has one; refuse rather than guess.
			return args, badRequest(method, fmt.Sprintf("argument %q (%s) has no command-line form; call with --json", s.Name, s.Type))
		}
	}
	var values []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if !utf8.ValidString(a) {
			return args, badRequest(method, fmt.Sprintf("command-line argument %d is not valid UTF-8", i+1))
		}
		if name, ok := strings.CutPrefix(a, "--"); ok && len(a) > 2 {
			if !dicts[name] {
				return args, badRequest(method, fmt.Sprintf("unknown option %q", abbrev([]byte(a))))
			}
			if i+2 >= len(argv) {
				return args, badRequest(method, fmt.Sprintf("option --%s takes a key and a value", name))
			}
			k, v := argv[i+1], argv[i+2]
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return args, badRequest(method, fmt.Sprintf("option --%s: key or value is not valid UTF-8", name))
			}
			args.dicts[name][k] = v
			i += 2
			continue
		}
		values = append(values, a)
	}
	if len(values) < len(positional) {
		return args, badRequest(method, fmt.Sprintf("missing required argument %q (%s)", positional[len(values)].Name, positional[len(values)].Type))
	}
	if len(values) > len(positional) {
		return args, badRequest(method, fmt.Sprintf("%d unexpected command-line arguments after %q", len(values)-len(positional), specNames(positional)))
	}
	for i, s := range positional {
		args.strs[s.Name] = values[i]
	}
	return args, nil
}

func specNames(specs []argSpec) string {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	return strings.Join(names, " ")
}
