package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/nvme"
	"github.com/sanvol/sanvol/transport"
	"github.com/sanvol/sanvol/volume"
)

// StatusDeps is what `sanvol status` reads.
type StatusDeps struct {
	Root   host.Root
	Runner host.Runner
	// Health is the per-SR-type path reporter (the transports).
	Health map[string]HealthReporter
	// Volumes lists an SR's volumes; nil leaves them out.
	Volumes VolumeLister
	// Net, when set, names the interface each portal is reached through.
	Net Net
	// Version is sanvol's own version.
	Version string
	Log     *zap.Logger
}

// VolumeLister lists an attached SR's volumes with their state on this
// host.
type VolumeLister interface {
	Volumes(ctx context.Context, sr volume.Attached) ([]VolumeState, error)
}

// VolumeState is one volume (logical volume) of an SR on this host.
type VolumeState struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Active bool   `json:"active"`
	Open   bool   `json:"open"`
	// Problem is what is wrong with the LV (volume.Problem): damaged or
	// foreign tags, an unfinished create or resize, a foreign LV.
	Problem string `json:"problem,omitempty"`
}

// LVMVolumes lists volumes with lvs, read-only: it never writes
// metadata, whatever the host's pool role.
type LVMVolumes struct {
	LVM  *lvm.Client
	Root host.Root
}

// Volumes lists the LVs of the SR's VG.
func (l LVMVolumes) Volumes(ctx context.Context, a volume.Attached) ([]VolumeState, error) {
	devs := []string{a.Device}
	if real, err := l.Root.EvalSymlinks(a.Device); err == nil && real != a.Device {
		devs = append(devs, real)
	}
	lvs, err := l.LVM.LVs(ctx, lvm.Scope{Devices: devs, ReadOnly: true}, a.VG)
	if err != nil {
		return nil, err
	}
	out := make([]VolumeState, 0, len(lvs))
	for _, v := range lvs {
		if v.VG != a.VG {
			continue
		}
		out = append(out, VolumeState{Name: v.Name, Size: v.Size, Active: v.Active(), Open: v.Open(), Problem: volume.Problem(v)})
	}
	return out, nil
}

// ToolVersion is one component's version on this host.
type ToolVersion struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// SRStatus is one attached SR.
type SRStatus struct {
	UUID   string            `json:"uuid"`
	Type   string            `json:"type"`
	Device string            `json:"device"`
	VG     string            `json:"vg"`
	Config map[string]string `json:"configuration"`
	// Paths are the SR's portals and the interfaces they leave through.
	Paths      []string         `json:"paths,omitempty"`
	Health     transport.Health `json:"health"`
	HealthErr  string           `json:"health_error,omitempty"`
	Volumes    []VolumeState    `json:"volumes,omitempty"`
	VolumesErr string           `json:"volumes_error,omitempty"`
}

// State is the one-word state of the SR.
func (s SRStatus) State() string {
	switch {
	case s.HealthErr != "":
		return "UNKNOWN"
	case s.Health.Total > 0 && s.Health.Live == 0:
		return "DOWN"
	case s.Health.Degraded():
		return "DEGRADED"
	}
	return "OK"
}

// StatusReport is the state of the sanvol SRs attached on this host.
type StatusReport struct {
	Host     string        `json:"host"`
	Product  string        `json:"product"`
	Kernel   string        `json:"kernel"`
	Time     time.Time     `json:"time"`
	Versions []ToolVersion `json:"versions"`
	SRs      []SRStatus    `json:"srs"`
	// Diagnostics holds each transport's detailed dump, by SR type,
	// when asked for (Plugin.diagnostics, status --verbose).
	Diagnostics map[string]string `json:"diagnostics,omitempty"`
}

// ReadStatus reads the state of the given attached SRs (volume.ListAttached).
// verbose adds each transport's diagnostics. It never fails: what it
// cannot read it says.
func ReadStatus(ctx context.Context, d StatusDeps, srs []volume.Attached, verbose bool) StatusReport {
	rep := StatusReport{Host: hostname(d.Root), Product: product(d.Root), Kernel: kernelRelease(d.Root), Time: time.Now()}
	var nv *netView
	dd := Deps{Root: d.Root, Runner: d.Runner, Net: d.Net, Resolve: net.DefaultResolver.LookupHost, Log: d.Log}
	if d.Net != nil {
		nv = newNetView(dd)
	}
	tr := newTransports(dd)
	rep.Versions = append([]ToolVersion{{"sanvol", orDash(d.Version)}}, toolVersions(ctx, d.Runner, tr)...)
	for _, a := range srs {
		st := SRStatus{UUID: a.UUID, Type: a.Type, Device: a.Device, VG: a.VG, Config: redactConfig(a.Configuration)}
		if nv != nil {
			if s := newSubject(ctx, tr, a.Type, a.UUID, a.Configuration); s.err == nil {
				for _, p := range nv.paths(ctx, s) {
					st.Paths = append(st.Paths, p.String())
				}
			}
		}
		if hr := d.Health[a.Type]; hr != nil {
			h, err := hr.Health(ctx, a.Configuration)
			if err != nil {
				st.HealthErr = err.Error()
			}
			st.Health = h
		} else {
			st.HealthErr = "no transport for SR type " + a.Type
		}
		if d.Volumes != nil {
			vs, err := d.Volumes.Volumes(ctx, a)
			if err != nil {
				st.VolumesErr = err.Error()
			} else if vs == nil {
				vs = []VolumeState{}
			}
			st.Volumes = vs
		}
		rep.SRs = append(rep.SRs, st)
	}
	if verbose {
		rep.Diagnostics = map[string]string{}
		for _, t := range sortedKeys(d.Health) {
			if d.Health[t] != nil {
				rep.Diagnostics[t] = d.Health[t].Diagnostics(ctx)
			}
		}
	}
	return rep
}

// redactConfig drops secrets (xapi hands their uuids, the CLI may hand
// plain values) from what status prints.
func redactConfig(cfg map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range cfg {
		if strings.Contains(strings.ToLower(k), "password") || strings.Contains(strings.ToLower(k), "secret") {
			v = "***"
		}
		out[k] = v
	}
	return out
}

func product(root host.Root) string {
	inv := readInventory(root)
	if n := inv["PRODUCT_BRAND"]; n != "" {
		return strings.TrimSpace(n + " " + inv["PRODUCT_VERSION"])
	}
	if b, err := root.ReadFile("/etc/os-release"); err == nil {
		if m := regexp.MustCompile(`(?m)^PRETTY_NAME="?([^"\n]+)"?`).FindSubmatch(b); m != nil {
			return string(m[1])
		}
	}
	return "unknown"
}

var versionRE = regexp.MustCompile(`v?(\d+\.\d+(?:\.\d+)*)`)

// toolVersions asks each storage tool for its version: nvme-cli,
// open-iscsi and multipath-tools through the transports that drive them,
// lvm2 directly. A missing tool is reported as "-".
func toolVersions(ctx context.Context, run host.Runner, tr transports) []ToolVersion {
	nvmeCLI, err := tr.nvme.CLIVersion(ctx)
	if err != nil || nvmeCLI == "" {
		nvmeCLI = "-"
	}
	lvm2 := "-"
	if res, err := run.Run(ctx, host.Cmd{Name: "lvm", Args: []string{"version"}, Timeout: 5 * time.Second}); err == nil {
		lvm2 = versionAfter(string(res.Stdout), "LVM version")
	}
	return []ToolVersion{
		{"nvme-cli", nvmeCLI},
		{"open-iscsi", versionAfter(tr.iscsi.IscsiadmVersion(ctx), "iscsiadm version")},
		{"multipath-tools", versionAfter(tr.iscsi.MultipathVersion(ctx), "multipath-tools")},
		{"lvm2", lvm2},
	}
}

// versionAfter is the version number that follows marker in text, or "-".
func versionAfter(text, marker string) string {
	i := strings.Index(text, marker)
	if i < 0 {
		return "-"
	}
	if m := versionRE.FindStringSubmatch(text[i:]); m != nil {
		return m[1]
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// JSON writes the machine-readable status.
func (s StatusReport) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// Text writes the status for a terminal and for bug reports.
func (s StatusReport) Text(w io.Writer) error {
	var b strings.Builder
	var vs []string
	for _, v := range s.Versions[min(1, len(s.Versions)):] {
		vs = append(vs, v.Name+" "+v.Version)
	}
	sanvolVersion := "-"
	if len(s.Versions) > 0 {
		sanvolVersion = s.Versions[0].Version
	}
	fmt.Fprintf(&b, "sanvol %s on %s (%s, kernel %s), %s\n", sanvolVersion, s.Host, s.Product, s.Kernel, s.Time.Format(time.RFC3339))
	fmt.Fprintf(&b, "tools: %s\n", strings.Join(vs, ", "))
	if len(s.SRs) == 0 {
		b.WriteString("\nno sanvol SR is attached on this host\n")
	}
	for _, sr := range s.SRs {
		fmt.Fprintf(&b, "\nSR %s  %s  %s", sr.UUID, sr.Type, sr.State())
		if sr.HealthErr == "" {
			fmt.Fprintf(&b, "  %d/%d paths live", sr.Health.Live, sr.Health.Total)
		}
		b.WriteString("\n")
		if len(sr.Paths) > 0 {
			fmt.Fprintf(&b, "   paths    %s\n", strings.Join(sr.Paths, ", "))
		}
		if sr.HealthErr != "" {
			fmt.Fprintf(&b, "   health   %s\n", sr.HealthErr)
		} else if sr.Health.Detail != "" {
			fmt.Fprintf(&b, "   health   %s\n", sr.Health.Detail)
		}
		fmt.Fprintf(&b, "   target   %s\n", targetLine(sr))
		fmt.Fprintf(&b, "   device   %s  VG %s\n", sr.Device, sr.VG)
		switch {
		case sr.VolumesErr != "":
			fmt.Fprintf(&b, "   volumes  cannot list: %s\n", sr.VolumesErr)
		case sr.Volumes != nil:
			fmt.Fprintf(&b, "   volumes  %s\n", volumesLine(sr.Volumes))
		}
		for _, v := range sr.Volumes {
			if v.Problem != "" {
				fmt.Fprintf(&b, "   problem  %s: %s\n", v.Name, v.Problem)
			}
		}
	}
	for _, t := range sortedKeys(s.Diagnostics) {
		fmt.Fprintf(&b, "\n--- %s transport ---\n%s", t, strings.TrimRight(s.Diagnostics[t], "\n")+"\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func targetLine(sr SRStatus) string {
	parts := []string{sr.Config[nvme.KeyTarget]}
	for _, k := range []string{nvme.KeyNQN, iscsi.KeyTargetIQN, iscsi.KeySCSIid, nvme.KeyNamespace} {
		if v := sr.Config[k]; v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, "  ")
}

func volumesLine(vs []VolumeState) string {
	var active []string
	sorted := append([]VolumeState(nil), vs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, v := range sorted {
		if !v.Active {
			continue
		}
		s := fmt.Sprintf("%s (%s", v.Name, humanSize(v.Size))
		if v.Open {
			s += ", open"
		}
		active = append(active, s+")")
	}
	line := fmt.Sprintf("%d of %d active here", len(active), len(vs))
	if len(active) > 0 {
		line += ": " + strings.Join(active, ", ")
	}
	return line
}

func humanSize(n int64) string {
	const gib = 1 << 30
	if n >= gib {
		return fmt.Sprintf("%.1f GiB", float64(n)/gib)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// Watch prints a fresh status every interval, clearing the terminal in
// between, until ctx ends (Ctrl-C). load builds one status.
func Watch(ctx context.Context, w io.Writer, interval time.Duration, load func(context.Context) (StatusReport, error)) error {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	// Poll's own error only says that ctx ended, which is how a watch
	// stops; load's and the terminal's errors end it with that error.
	var failed error
	_ = host.Poll(ctx, interval, func(ctx context.Context) (bool, error) {
		failed = show(ctx, w, interval, load)
		return failed != nil, nil
	})
	return failed
}

// show clears the terminal and prints one fresh status.
func show(ctx context.Context, w io.Writer, interval time.Duration, load func(context.Context) (StatusReport, error)) error {
	rep, err := load(ctx)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, "\033[H\033[2J"); err != nil {
		return err
	}
	if err := rep.Text(w); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nrefreshing every %s; Ctrl-C to stop\n", interval)
	return nil
}
