package plugin

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sanvol/sanvol/doctor"
	"github.com/sanvol/sanvol/lvm"
	"github.com/sanvol/sanvol/volume"
)

// ExitCodeError carries a command's own exit status (sanvol doctor: 1 for
// WARN, 2 for FAIL) through cobra to Main.
type ExitCodeError int

func (e ExitCodeError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// healthReporters gives the doctor and status each SR type's transport.
func healthReporters(deps *Deps) map[string]doctor.HealthReporter {
	out := map[string]doctor.HealthReporter{}
	for _, t := range SRTypes() {
		svc, err := newServices(deps, t)
		if err != nil {
			continue
		}
		out[t] = svc.transport
	}
	return out
}

func statusDeps(deps *Deps) doctor.StatusDeps {
	return doctor.StatusDeps{
		Root: deps.Root, Runner: deps.Runner, Net: doctor.Netlink{}, Version: deps.Version, Log: deps.Log,
		Volumes: doctor.LVMVolumes{LVM: lvm.New(deps.Runner, deps.Log), Root: deps.Root},
		Health:  healthReporters(deps),
	}
}

// hostStatus is what `sanvol status` shows and, verbose, what
// Plugin.diagnostics returns, so bug reports carry the same view.
func hostStatus(ctx context.Context, deps *Deps, verbose bool) (doctor.StatusReport, error) {
	srs, err := volume.ListAttached(deps.Root)
	if err != nil {
		return doctor.StatusReport{}, err
	}
	return doctor.ReadStatus(ctx, statusDeps(deps), srs, verbose), nil
}

func doctorCmd(deps *Deps) *cobra.Command {
	var (
		o      doctor.Options
		target string
		cfg    []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "doctor [--sr UUID | --type nvmetcp|iscsi-ng --target PORTALS] [--json]",
		Short: "Check this host against SAN best practices: PASS/WARN/FAIL with evidence and the fix (exit 0, 1 WARN, 2 FAIL)",
		Long: `Checks the storage paths (count, NICs, management interface, bonds), ARP and
rp_filter settings, MTU end to end, NVMe (nvme-tcp, native multipath, iopolicy,
host NQN) and iSCSI (iscsid, multipathd, node-record timeouts, map settings,
initiator IQN), and pool-wide uniqueness of IQNs and host NQNs through XenAPI.
Without --sr or --type it checks every sanvol SR attached on this host. It
only reads; --record also stores this host's NVMe host NQN in XenAPI, where
the other hosts' doctors compare it. See docs/doctor.md for every check and
the guide it comes from.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Type != "" {
				o.Config = map[string]string{"target": target}
				for _, kv := range cfg {
					k, v, ok := strings.Cut(kv, "=")
					if !ok {
						return fmt.Errorf("--config %q: expected key=value", kv)
					}
					o.Config[k] = v
				}
			}
			d := doctor.NewDeps(deps.Root, deps.Runner, deps.Log)
			d.Health = healthReporters(deps)
			rep, err := doctor.Run(cmd.Context(), d, o)
			if err != nil {
				return err
			}
			if asJSON {
				err = rep.JSON(cmd.OutOrStdout())
			} else {
				err = rep.Text(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if c := rep.ExitCode(); c != 0 {
				return ExitCodeError(c)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.SR, "sr", "", "check one attached SR (its uuid)")
	cmd.Flags().StringVar(&o.Type, "type", "", "nvmetcp or iscsi-ng: check a device-config before xe sr-create")
	cmd.Flags().StringVar(&target, "target", "", "portals (device-config:target), with --type")
	cmd.Flags().StringArrayVar(&cfg, "config", nil, "other device-config key=value, with --type")
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	cmd.Flags().BoolVar(&o.Record, "record", false, "store this host's NVMe host NQN in its XenAPI host record (other-config:hostnqn), where the other hosts' doctors compare it; without it the doctor writes nothing")
	return cmd
}

func statusCmd(deps *Deps) *cobra.Command {
	var watch, asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--watch]",
		Short: "Show every sanvol SR attached on this host: paths, states, health, volumes active here, versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			load := func(ctx context.Context) (doctor.StatusReport, error) { return hostStatus(ctx, deps, false) }
			if watch {
				return doctor.Watch(cmd.Context(), cmd.OutOrStdout(), 2*time.Second, load)
			}
			rep, err := load(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return rep.JSON(cmd.OutOrStdout())
			}
			return rep.Text(cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "refresh every 2 s until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "machine-readable output")
	return cmd
}
