package plugin

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sanvol/sanvol/volume"
)

func probeCmd(deps *Deps) *cobra.Command {
	var (
		srType  string
		pairs   []string
		asJSON  bool
		timeout = defaultCLITimeout
	)
	cmd := &cobra.Command{
		Use:   "probe --type nvmetcp|iscsi-ng --config key=value …",
		Short: "Discover what a device-config reaches: targets, LUNs or namespaces, and existing SRs",
		Long: `Runs the same discovery as SR.probe (xe sr-probe-ext) on this host and
prints it for a person: each target, subsystem, LUN or namespace reachable with
the given device-config keys, whether the configuration is complete enough for
xe sr-create, and any sanvol SR already on it. Example:

  sanvol probe --type nvmetcp --config target=10.0.1.5,10.0.2.5
  sanvol probe --type iscsi-ng --config target=10.0.1.5 --config targetIQN='*'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := map[string]string{}
			for _, kv := range pairs {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--config %q: expected key=value", kv)
				}
				cfg[k] = v
			}
			svc, err := deps.Services(srType)
			if err != nil {
				return err
			}
			e, err := svc.Engine()
			if err != nil {
				return err
			}
			ctx, cancel := contextWithTimeout(cmd, timeout)
			defer cancel()
			res, err := e.SRProbe(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			printProbe(cmd.OutOrStdout(), srType, res)
			return nil
		},
	}
	cmd.Flags().StringVar(&srType, "type", TypeNVMeTCP, "SR type: nvmetcp or iscsi-ng")
	cmd.Flags().StringArrayVarP(&pairs, "config", "c", nil, "device-config key=value (repeatable)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	cmd.Flags().DurationVar(&timeout, "timeout", timeout, "give up after this long")
	return cmd
}

func printProbe(w io.Writer, srType string, res []volume.ProbeResult) {
	if len(res) == 0 {
		fmt.Fprintln(w, "nothing found")
		return
	}
	for i, r := range res {
		state := "incomplete: add the keys the next probe asks for"
		if r.Complete {
			state = "complete: usable for xe sr-create"
		}
		fmt.Fprintf(w, "[%d] %s\n", i+1, state)
		if r.SR != nil {
			fmt.Fprintf(w, "    existing SR %s %q (%s, %s free): reattach with xe sr-introduce/pbd-create instead of sr-create\n",
				r.SR.UUID, r.SR.Name, bytesHuman(r.SR.TotalSpace), bytesHuman(r.SR.FreeSpace))
		}
		fmt.Fprintf(w, "    xe sr-create type=%s shared=true name-label=<name>%s\n", srType, configArgs(r.Configuration))
		for _, k := range sortedKeys(r.ExtraInfo) {
			fmt.Fprintf(w, "    %-14s %s\n", k+":", r.ExtraInfo[k])
		}
	}
}

func configArgs(cfg map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(cfg) {
		if k == "sr_uuid" {
			continue
		}
		fmt.Fprintf(&b, " device-config:%s=%s", k, shellQuote(cfg[k]))
	}
	return b.String()
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:-_/@+=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
