// Package lvmtest is a fake host.Runner for tests of code that drives LVM
// and the block tools: it records every command and answers from rules.
// It also renders LVM JSON reports in the shape lvm2 prints them (checked
// against the lab's captured reports by lvm's own tests).
package lvmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

// Reply is what a faked command does.
type Reply struct {
	Stdout string
	Stderr string
	Code   int   // non-zero: the command fails with *host.ExitError
	Err    error // a start failure or timeout (*host.CmdError cause)
}

// Rule answers the commands it matches, Times times (0 = always).
type Rule struct {
	Match func(c host.Cmd) bool
	Reply func(c host.Cmd) Reply
	Times int
	used  int
}

// Runner is the fake.
type Runner struct {
	mu    sync.Mutex
	rules []*Rule
	calls []host.Cmd
	// Default answers commands no rule matches; nil fails the command
	// with exit 99 so that a test sees unexpected commands.
	Default func(c host.Cmd) Reply
}

// On adds a rule that always answers.
func (r *Runner) On(match func(host.Cmd) bool, reply Reply) *Runner {
	return r.OnFunc(match, func(host.Cmd) Reply { return reply }, 0)
}

// Once adds a rule that answers one command.
func (r *Runner) Once(match func(host.Cmd) bool, reply Reply) *Runner {
	return r.OnFunc(match, func(host.Cmd) Reply { return reply }, 1)
}

// OnFunc adds a rule with a computed reply.
func (r *Runner) OnFunc(match func(host.Cmd) bool, reply func(host.Cmd) Reply, times int) *Runner {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rules = append(r.rules, &Rule{Match: match, Reply: reply, Times: times})
	return r
}

// Run implements host.Runner.
func (r *Runner) Run(ctx context.Context, c host.Cmd) (host.Result, error) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	var reply *Reply
	for _, rule := range r.rules {
		if (rule.Times == 0 || rule.used < rule.Times) && rule.Match(c) {
			rule.used++
			rep := rule.Reply(c)
			reply = &rep
			break
		}
	}
	if reply == nil {
		rep := Reply{Code: 99, Stderr: "lvmtest: unexpected command " + c.String()}
		if r.Default != nil {
			rep = r.Default(c)
		}
		reply = &rep
	}
	r.mu.Unlock()
	res := host.Result{Stdout: []byte(reply.Stdout), Stderr: []byte(reply.Stderr), ExitCode: reply.Code}
	if reply.Err != nil {
		return res, &host.CmdError{Cmd: c.String(), Err: reply.Err}
	}
	if reply.Code != 0 {
		return res, &host.ExitError{Cmd: c.String(), Code: reply.Code, Stderr: strings.TrimSpace(reply.Stderr), Stdout: strings.TrimSpace(reply.Stdout)}
	}
	return res, nil
}

// Calls returns the commands run so far.
func (r *Runner) Calls() []host.Cmd {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// Count counts the commands run so far that match.
func (r *Runner) Count(match func(host.Cmd) bool) int {
	n := 0
	for _, c := range r.Calls() {
		if match(c) {
			n++
		}
	}
	return n
}

// Reset forgets the recorded commands (not the rules).
func (r *Runner) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

// LVM matches `lvm <sub> ...`; an empty sub matches any LVM command.
func LVM(sub string) func(host.Cmd) bool {
	return func(c host.Cmd) bool {
		return c.Name == "lvm" && len(c.Args) > 0 && (sub == "" || c.Args[0] == sub)
	}
}

// Tool matches a command by program name.
func Tool(name string) func(host.Cmd) bool {
	return func(c host.Cmd) bool { return c.Name == name }
}

// And combines matchers.
func And(ms ...func(host.Cmd) bool) func(host.Cmd) bool {
	return func(c host.Cmd) bool {
		for _, m := range ms {
			if !m(c) {
				return false
			}
		}
		return true
	}
}

// HasArg matches commands with arg among their arguments.
func HasArg(arg string) func(host.Cmd) bool {
	return func(c host.Cmd) bool { return slices.Contains(c.Args, arg) }
}

// Version is the `lvm version` output of a release, in lvm2's layout.
func Version(v string) Reply {
	return Reply{Stdout: "  LVM version:     " + v + "(2) (2022-05-18)\n  Library version: 1.02.185 (2022-05-18)\n  Driver version:  4.48.0\n"}
}

// Args returns the arguments after the --config value of an LVM command:
// what the caller asked for.
func Args(c host.Cmd) []string {
	for i, a := range c.Args {
		if a == "--config" && i+1 < len(c.Args) {
			return c.Args[i+2:]
		}
	}
	return c.Args
}

// Values returns every value of a repeated option, e.g. --addtag.
func Values(c host.Cmd, opt string) []string {
	var v []string
	for i, a := range c.Args {
		if a == opt && i+1 < len(c.Args) {
			v = append(v, c.Args[i+1])
		}
	}
	return v
}

// report renders {"report":[{section:[rows]}]} with 2-space indents like
// lvm2's json format; key order follows the fields.
func report(section string, fields []string, rows []map[string]string) string {
	var b strings.Builder
	b.WriteString("  {\n      \"report\": [\n          {\n              \"" + section + "\": [\n")
	for i, row := range rows {
		b.WriteString("                  {")
		for j, f := range fields {
			if j > 0 {
				b.WriteString(", ")
			}
			k, _ := json.Marshal(f)
			v, _ := json.Marshal(row[f])
			fmt.Fprintf(&b, "%s:%s", k, v)
		}
		b.WriteString("}")
		if i < len(rows)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("              ]\n          }\n      ]\n  }\n")
	return b.String()
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// VGs renders a `vgs` report of sanvol's VG fields.
func VGs(vgs ...lvm.VG) Reply {
	var rows []map[string]string
	for _, v := range vgs {
		rows = append(rows, map[string]string{"vg_name": v.Name, "vg_uuid": v.UUID, "vg_size": itoa(v.Size), "vg_free": itoa(v.Free),
			"vg_extent_size": itoa(v.ExtentSize), "vg_tags": strings.Join(v.Tags, ","), "vg_mda_size": itoa(v.MDASize),
			"vg_mda_free": itoa(v.MDAFree), "lv_count": strconv.Itoa(v.LVCount), "pv_count": strconv.Itoa(v.PVCount)})
	}
	return Reply{Stdout: report("vg", strings.Split(lvm.VGFields, ","), rows)}
}

// LVs renders an `lvs` report of sanvol's LV fields.
func LVs(lvs ...lvm.LV) Reply { return LVsOf(lvm.LVFields, lvs...) }

// LVsOf renders an `lvs` report of the given fields (a subset of
// lvm.LVFields), as `lvs -o fields` prints it.
func LVsOf(fields string, lvs ...lvm.LV) Reply {
	var rows []map[string]string
	for _, l := range lvs {
		rows = append(rows, map[string]string{"lv_name": l.Name, "vg_name": l.VG, "lv_uuid": l.UUID, "lv_size": itoa(l.Size),
			"lv_tags": strings.Join(l.Tags, ","), "lv_attr": l.Attr})
	}
	return Reply{Stdout: report("lv", strings.Split(fields, ","), rows)}
}

// PVs renders a `pvs` report of sanvol's PV fields.
func PVs(pvs ...lvm.PV) Reply {
	var rows []map[string]string
	for _, p := range pvs {
		rows = append(rows, map[string]string{"pv_name": p.Name, "vg_name": p.VG, "pv_uuid": p.UUID, "pv_size": itoa(p.Size),
			"pv_mda_size": itoa(p.MDASize), "vg_tags": strings.Join(p.VGTags, ",")})
	}
	return Reply{Stdout: report("pv", strings.Split(lvm.PVFields, ","), rows)}
}
