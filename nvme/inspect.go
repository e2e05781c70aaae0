package nvme

import (
	"context"
	"path"
	"time"

	"github.com/sanvol/sanvol/host"
)

// This file is the transport's read-only face for `sanvol doctor` and
// `sanvol status`: the same device-config parser, defaults, identity
// checks and sysfs readers that SR.attach uses, so that a check can never
// read an SR differently from the transport that attached it. Nothing
// here writes to the host or loads a module.

// MultipathParam is nvme_core's native multipath switch ("Y" when on).
const MultipathParam = sysMultipathParam

// MultipathOn says whether a value of MultipathParam turns native
// multipath on: the kernel prints a bool parameter as Y or N, and
// modprobe also takes y and 1.
func MultipathOn(v string) bool { return v == "Y" || v == "y" || v == "1" }

// ParseConfig validates a device-config as SR.attach does. It does not
// need nqn (a pre-flight check may not know it yet) and leaves the
// dhchap secrets unread.
func (t *Transport) ParseConfig(ctx context.Context, cfg map[string]string) (Config, error) {
	return parseConfig(ctx, cfg, parseOpts{})
}

// ValidNQN reports whether s is an NQN the transport accepts (NVMe base
// specification rules, and nothing that would split the kernel's
// connect options).
func ValidNQN(s string) bool { return validNQN(s) }

// Subsystems lists every NVMe subsystem on the host, sorted by name.
func (t *Transport) Subsystems() ([]Subsystem, error) { return t.sys.subsystems() }

// Controllers lists every NVMe controller (one per path), sorted by name.
func (t *Transport) Controllers() ([]Controller, error) { return t.sys.controllers() }

// Dir is the subsystem's sysfs directory, where its iopolicy lives.
func (s Subsystem) Dir() string { return path.Join(sysClassSubsys, s.Name) }

// CLIVersion runs `nvme version` and returns nvme-cli's version.
func (t *Transport) CLIVersion(ctx context.Context) (string, error) {
	res, err := t.run.Run(ctx, host.Cmd{Name: nvmeCmd, Args: []string{"version"}, Timeout: 10 * time.Second})
	if err != nil {
		return "", err
	}
	return parseVersion(res.Stdout), nil
}
