// Package doctor checks a host against the storage best practices of the
// seed guides (iSCSI and NVMe/TCP on XCP-ng, Citrix's multipathing guide,
// NexentaStor's Linux client guide) and reports, for every check, PASS,
// WARN or FAIL with the evidence it read and the exact command that fixes
// it. It also renders `sanvol status`, the at-a-glance view of the SRs
// attached on the host, which Plugin.diagnostics returns too.
//
// It reads an SR's device-config, sessions, node records, subsystems and
// multipath map only through its transport's read-only views (nvme and
// iscsi, inspect.go), so it never reads an SR otherwise than the transport
// that attached it. The rest of the host it reads through host.Root
// (sysfs, /proc, /etc, /run), host.Runner (ping, systemctl, ovs-vsctl),
// the Net interface (netlink) and the Pool interface (XenAPI), so every
// check is unit tested against a fake host.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/nvme"
	"github.com/sanvol/sanvol/transport"
)

// Status is the outcome of one check.
type Status int

// The outcomes, from best to worst. Skip means the check does not apply
// (for example, iopolicy before the subsystem is connected); it never
// hides a problem, and never counts as a pass in the summary.
const (
	Skip Status = iota
	Pass
	Warn
	Fail
)

func (s Status) String() string {
	switch s {
	case Pass:
		return "PASS"
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	default:
		return "SKIP"
	}
}

// MarshalText makes the JSON report say "PASS" rather than a number.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the JSON form back.
func (s *Status) UnmarshalText(b []byte) error {
	for _, v := range []Status{Skip, Pass, Warn, Fail} {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("unknown check status %q", b)
}

// Result is one check's finding about one subject (an SR, the host or
// the pool).
type Result struct {
	Check  string `json:"check"`
	Title  string `json:"title"`
	Scope  string `json:"scope"`
	Status Status `json:"status"`
	// Summary is one line: what was found.
	Summary string `json:"summary"`
	// Evidence lists what the check read: values, command output.
	Evidence []string `json:"evidence,omitempty"`
	// Fix is the exact command (or commands, one per line) that
	// repairs the finding; empty when there is nothing to fix.
	Fix    string `json:"fix,omitempty"`
	Source string `json:"source"`
}

// Report is the outcome of one doctor run.
type Report struct {
	Host    string    `json:"host"`
	Kernel  string    `json:"kernel"`
	Time    time.Time `json:"time"`
	Results []Result  `json:"results"`
}

// Worst is the worst status of the report (Skip when it is empty).
func (r Report) Worst() Status {
	w := Skip
	for _, res := range r.Results {
		if res.Status > w {
			w = res.Status
		}
	}
	return w
}

// ExitCode is what `sanvol doctor` exits with: 0 when nothing is wrong,
// 1 when the worst finding is a WARN, 2 when something FAILs.
func (r Report) ExitCode() int {
	switch r.Worst() {
	case Fail:
		return 2
	case Warn:
		return 1
	}
	return 0
}

// Counts returns how many results have each status.
func (r Report) Counts() map[Status]int {
	c := map[Status]int{}
	for _, res := range r.Results {
		c[res.Status]++
	}
	return c
}

// JSON writes the machine-readable report.
func (r Report) JSON(w io.Writer) error {
	out := struct {
		Report
		Summary  map[string]int `json:"summary"`
		ExitCode int            `json:"exit_code"`
	}{Report: r, Summary: map[string]int{}, ExitCode: r.ExitCode()}
	for s, n := range r.Counts() {
		out.Summary[s.String()] = n
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// Text writes the report for a terminal: one line per check, and under
// every WARN and FAIL its evidence, the fix and the guide it comes from.
func (r Report) Text(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "sanvol doctor on %s (kernel %s), %s\n", r.Host, r.Kernel, r.Time.Format(time.RFC3339))
	scope := ""
	for _, res := range r.Results {
		if res.Scope != scope {
			scope = res.Scope
			fmt.Fprintf(&b, "\n%s\n", scope)
		}
		fmt.Fprintf(&b, "  %-4s  %-20s %s\n", res.Status, res.Check, res.Summary)
		if res.Status < Warn {
			continue
		}
		for _, e := range res.Evidence {
			fmt.Fprintf(&b, "        | %s\n", e)
		}
		if res.Fix != "" {
			lines := strings.Split(res.Fix, "\n")
			fmt.Fprintf(&b, "        fix: %s\n", lines[0])
			for _, l := range lines[1:] {
				fmt.Fprintf(&b, "             %s\n", l)
			}
		}
		fmt.Fprintf(&b, "        source: %s\n", res.Source)
	}
	c := r.Counts()
	fmt.Fprintf(&b, "\n%d PASS, %d WARN, %d FAIL, %d SKIP: exit %d\n", c[Pass], c[Warn], c[Fail], c[Skip], r.ExitCode())
	_, err := io.WriteString(w, b.String())
	return err
}

// Options says what to check.
type Options struct {
	// SR checks one SR attached on this host (its uuid).
	SR string
	// Type and Config check an SR that is not attached (or not created)
	// yet: Type is nvmetcp or iscsi-ng, Config its device-config, at
	// least "target". This is the pre-flight before `xe sr-create`.
	Type   string
	Config map[string]string
	// Neither: every sanvol SR attached on this host.

	// Record allows the one write the doctor can make: recording this
	// host's NVMe host NQN in its XenAPI host record, where the other
	// hosts' doctors compare it (xapi has no field of its own for it).
	// Without it the doctor only reads, so an admin can run it anywhere,
	// any time, without changing what the pool holds.
	Record bool
}

// Deps is what the doctor reads the host through.
type Deps struct {
	Root   host.Root
	Runner host.Runner
	Net    Net
	// Pool reads the pool's hosts through XenAPI; nil when there is no
	// xapi (the checks then say so, they never pass).
	Pool Pool
	// SMAPIv1 lists the pool's SMAPIv1 iSCSI SRs by target IQN through
	// XenAPI; nil reads only this host's sm reference files.
	SMAPIv1 host.SMAPIv1SRs
	// Health reports the live paths of an attached SR, per SR type
	// (transport.Transport satisfies it); nil or a missing type skips the
	// live-path check.
	Health map[string]HealthReporter
	// Resolve turns a host name in device-config:target into addresses;
	// nil uses the system resolver.
	Resolve func(ctx context.Context, name string) ([]string, error)
	Log     *zap.Logger
}

// HealthReporter is the part of transport.Transport the doctor and the
// status use.
type HealthReporter interface {
	Health(ctx context.Context, cfg map[string]string) (transport.Health, error)
	Diagnostics(ctx context.Context) string
}

// NewDeps returns the production dependencies: netlink, XenAPI over the
// local socket, and the given root and runner.
func NewDeps(root host.Root, run host.Runner, log *zap.Logger) Deps {
	x := host.NewXenAPI(root)
	return Deps{Root: root, Runner: run, Net: Netlink{}, Pool: NewXenAPIPool(x, root), SMAPIv1: x, Log: log}
}

// The SR types the doctor knows.
const (
	TypeNVMeTCP = nvme.SRType
	TypeISCSI   = iscsi.SRType
)

// Run runs every check that applies and returns the report. The error is
// for a run that could not start (bad options, unreadable attach state);
// a failing check is a Result, never an error.
func Run(ctx context.Context, d Deps, o Options) (Report, error) {
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.Resolve == nil {
		d.Resolve = net.DefaultResolver.LookupHost
	}
	rep := Report{Host: hostname(d.Root), Kernel: kernelRelease(d.Root), Time: time.Now()}
	tr := newTransports(d)
	subjects, err := subjectsFor(ctx, d, tr, o)
	if err != nil {
		return rep, err
	}
	r := &run{d: d, o: o, tr: tr, net: newNetView(d), rep: &rep}
	if len(subjects) == 0 {
		rep.Results = append(rep.Results, result(chkScope, "this host", Warn,
			"no sanvol SR is attached on this host, so there is nothing to check",
			nil, "before creating an SR, check its portals: sanvol doctor --type nvmetcp|iscsi-ng --target <portal>,<portal>\n"+
				"for an existing SR, plug it on this host first: xe pbd-plug uuid=<PBD of the SR on this host>"))
		return rep, nil
	}
	types := map[string]bool{}
	for _, s := range subjects {
		r.checkSubject(ctx, s)
		types[s.Type] = true
	}
	if types[TypeNVMeTCP] {
		r.checkNVMeHost(ctx, subjects)
	}
	if types[TypeISCSI] {
		r.checkISCSIHost(ctx)
	}
	return rep, nil
}

// run is the state of one doctor run.
type run struct {
	d   Deps
	o   Options
	tr  transports
	net *netView
	rep *Report
}

func (r *run) add(res Result) { r.rep.Results = append(r.rep.Results, res) }

// result builds a Result of a registered check.
func result(id, scope string, st Status, summary string, evidence []string, fix string) Result {
	c, ok := checkByID(id)
	if !ok {
		panic("doctor: unregistered check " + id)
	}
	return Result{Check: id, Title: c.Title, Scope: scope, Status: st, Summary: summary, Evidence: evidence, Fix: fix, Source: c.source()}
}

func (r *run) checkSubject(ctx context.Context, s *subject) {
	if s.err != nil {
		r.add(result(chkConfig, s.scope(), Fail, s.err.Error(), nil, s.errFix))
		return
	}
	paths := r.net.paths(ctx, s)
	r.checkPathCount(s, paths)
	r.checkLivePaths(ctx, s)
	r.checkRedundancy(s, paths)
	r.checkManagement(ctx, s, paths)
	r.checkDefaultRoute(s, paths)
	r.checkBond(s, paths)
	r.checkARP(s, paths)
	r.checkRPFilter(s, paths)
	r.checkMTU(ctx, s, paths)
	switch s.Type {
	case TypeNVMeTCP:
		r.checkIOPolicy(s)
	case TypeISCSI:
		r.checkNodeRecords(ctx, s, paths)
		r.checkSMShared(ctx, s)
		r.checkMap(ctx, s)
	}
}

func hostname(root host.Root) string {
	if h, err := root.ReadString("/proc/sys/kernel/hostname"); err == nil && h != "" {
		return h
	}
	return "this host"
}

func kernelRelease(root host.Root) string { return host.KernelRelease(root) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
