package xapisim

// The daemon's side of registration: each plugin's features as the
// daemon derives them, and the datapath plugin a URI scheme picks.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/sanvol/sanvol/plugin"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// featureFiles are the method files whose presence adds a feature,
// whatever Plugin.Query says (main.ml, QueryImpl.query_impl).
var featureFiles = [][2]string{
	{"SR.attach", "SR_ATTACH"}, {"SR.create", "SR_CREATE"}, {"SR.destroy", "SR_DELETE"},
	{"SR.detach", "SR_DETACH"}, {"SR.ls", "SR_SCAN"}, {"SR.stat", "SR_UPDATE"}, {"SR.probe", "SR_PROBE"},
	{"Volume.create", "VDI_CREATE"}, {"Volume.clone", "VDI_CLONE"}, {"Volume.snapshot", "VDI_SNAPSHOT"},
	{"Volume.resize", "VDI_RESIZE"}, {"Volume.destroy", "VDI_DELETE"}, {"Volume.stat", "VDI_UPDATE"},
}

// deriveFeatures is the feature list the daemon answers xapi's
// Query.query with (main.ml, QueryImpl.query_impl): the plugin's
// features with VDI_DESTROY renamed VDI_DELETE; one feature per method
// file that exists as an executable regular file (Script.path,
// lib.ml assert_is_executable), whether or not the plugin declared it;
// VDI_ATTACH, VDI_DETACH, VDI_ACTIVATE, VDI_DEACTIVATE and VDI_INTRODUCE
// always; and VDI_RESET_ON_BOOT/2 whenever VDI_CLONE is in the list. Nothing
// is ever removed: a declared feature stays even without its file.
func deriveFeatures(dir string, declared []string) []string {
	var out []string
	for _, f := range declared {
		if f == "VDI_DESTROY" {
			f = "VDI_DELETE"
		}
		out = append(out, f)
	}
	var files []string
	for _, ff := range featureFiles {
		if _, err := plugin.FindMethod(dir, ff[0]); err == nil {
			files = append([]string{ff[1]}, files...) // the daemon's loop conses
		}
	}
	out = append(out, files...)
	out = append(out, "VDI_ATTACH", "VDI_DETACH", "VDI_ACTIVATE", "VDI_DEACTIVATE", "VDI_INTRODUCE")
	if HasFeature(out, "VDI_CLONE") {
		out = append([]string{"VDI_RESET_ON_BOOT/2"}, out...)
	}
	return out
}

// knownFeatures are the capabilities xapi understands (xen-api
// ocaml/xapi/smint.ml, string_to_capability_table); it drops the others.
var knownFeatures = strings.Fields(`SR_CREATE SR_DELETE SR_ATTACH SR_DETACH SR_SCAN SR_PROBE SR_UPDATE
	SR_SUPPORTS_LOCAL_CACHING SR_METADATA SR_TRIM SR_MULTIPATH SR_CACHING SR_STATS VDI_CREATE VDI_DELETE
	VDI_ATTACH VDI_DETACH VDI_MIRROR VDI_MIRROR_IN VDI_RESIZE VDI_RESIZE_ONLINE VDI_CLONE VDI_SNAPSHOT
	VDI_ACTIVATE VDI_ACTIVATE_READONLY VDI_DEACTIVATE VDI_UPDATE VDI_INTRODUCE VDI_GENERATE_CONFIG
	VDI_ATTACH_OFFLINE VDI_RESET_ON_BOOT VDI_CONFIG_CBT VDI_COMPOSE LARGE_VDI THIN_PROVISIONING
	VDI_READ_CACHING VDI_REVERT`)

// HasFeature tells whether xapi sees capability c in a feature list, as
// Smint.Feature.has_capability does after parse_string_int64: a "/N"
// version suffix is ignored and unknown names are dropped.
func HasFeature(features []string, c string) bool {
	if !slices.Contains(knownFeatures, c) {
		return false
	}
	for _, f := range features {
		if name, _, _ := strings.Cut(f, "/"); name == c {
			return true
		}
	}
	return false
}

// SMFeatures replays `xe sm-param-get uuid=<sm> param-name=features` after
// xapi has bound the plugin: the daemon's Plugin.Query, and the features
// it derives from the method files.
func (s *Sim) SMFeatures(ctx context.Context, srType string) ([]string, error) {
	o := s.begin("xe sm-param-get param-name=features   # type=" + srType)
	defer o.end()
	var q schema.QueryResult
	dir := s.VolumeDir(srType)
	if err := o.call(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: o.dbg}, &q); err != nil {
		return nil, err
	}
	f := deriveFeatures(dir, q.Features)
	o.say("  = %s", strings.Join(f, " "))
	return f, nil
}

func describeErr(err error) string {
	var ce *plugin.CallError
	if errors.As(err, &ce) {
		s := ce.Doc.Code
		if len(ce.Doc.Params) > 0 {
			s += " " + strings.Join(ce.Doc.Params, " | ")
		}
		return s
	}
	return err.Error()
}

// Register runs Plugin.Query in every datapath directory as the daemon
// does when it starts. A directory whose query fails or asks for another
// API version is silently not registered by the daemon; Refused says why.
func (s *Sim) Register(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.registerLocked(ctx)
}

func (s *Sim) registerLocked(ctx context.Context) {
	s.registered, s.refused = map[string]*Datapath{}, map[string]error{}
	entries, err := os.ReadDir(filepath.Join(s.Root, "datapath"))
	if err != nil {
		s.refused["datapath/"] = err
		return
	}
	for _, e := range entries {
		dir := filepath.Join(s.Root, "datapath", e.Name())
		var q schema.QueryResult
		raw, err := s.invoke(ctx, dir, "Plugin.Query", schema.DbgArgs{Dbg: "register"})
		if err == nil {
			err = json.Unmarshal(raw, &q)
		}
		if err != nil {
			s.refused[e.Name()] = err
			continue
		}
		if q.RequiredAPIVersion != "5.0" && q.RequiredAPIVersion != "3.0" {
			s.refused[e.Name()] = fmt.Errorf("required_api_version %q is neither 5.0 nor 3.0", q.RequiredAPIVersion)
			continue
		}
		s.registered[e.Name()] = &Datapath{Scheme: e.Name(), Dir: dir, Query: q}
	}
}

// Refused lists the datapath directories the daemon would not register.
func (s *Sim) Refused(ctx context.Context) map[string]error {
	s.ensureRegistered(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]error{}
	for k, v := range s.refused {
		out[k] = v
	}
	return out
}

func (s *Sim) ensureRegistered(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.registered == nil {
		s.registerLocked(ctx)
	}
}

// ChooseDatapath picks the datapath for a volume's URIs as the daemon
// does (spec §2.3): the first URI whose lower-cased scheme names a
// registered datapath directory. The URI is returned verbatim.
func (s *Sim) ChooseDatapath(ctx context.Context, uris []string) (*Datapath, string, error) {
	return s.chooseDatapath(ctx, uris, true)
}

// chooseDatapath is main.ml's choose_datapath: URIs with a scheme naming
// a registered datapath plugin, in order; for a non-persistent use
// (epoch_begin persistent=false) those whose plugin declares
// NONPERSISTENT come first.
func (s *Sim) chooseDatapath(ctx context.Context, uris []string, persistent bool) (*Datapath, string, error) {
	s.ensureRegistered(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	type cand struct {
		d   *Datapath
		uri string
	}
	var possible []cand
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil || p.Scheme == "" {
			continue
		}
		if d, ok := s.registered[strings.ToLower(p.Scheme)]; ok {
			possible = append(possible, cand{d, u})
		}
	}
	if !persistent {
		sort.SliceStable(possible, func(i, j int) bool {
			return possible[i].d.NonPersistent() && !possible[j].d.NonPersistent()
		})
	}
	if len(possible) > 0 {
		return possible[0].d, possible[0].uri, nil
	}
	names := make([]string, 0, len(s.registered))
	for n := range s.registered {
		names = append(names, n)
	}
	sort.Strings(names)
	return nil, "", &plugin.CallError{Doc: schema.ErrorDoc{
		Code:   "MISSING_URI",
		Params: []string{fmt.Sprintf("no registered datapath plugin (%s) for any of %v", strings.Join(names, ", "), uris)},
	}}
}
