package iscsi

import (
	"context"
	"fmt"
	pathpkg "path"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// SMRefDir is where sm counts, per target IQN, its SMAPIv1 iSCSI SRs
// (lvmoiscsi, iscsi) attached on this host: a file named after the IQN
// with one SR uuid a line (xcp-ng/sm drivers/util.py ISCSI_REFDIR,
// _incr_iscsiSR_refcount from BaseISCSI.attach; the file goes with the
// last detach, _decr_iscsiSR_refcount).
const SMRefDir = "/var/run/sr-ref"

// SMAPIv1SRsOn returns the SMAPIv1 iSCSI SRs sm has attached on this host
// on the target iqn, from sm's reference file. The doctor reports them;
// the transport refuses to create an SR next to them.
func SMAPIv1SRsOn(root host.Root, iqn string) []string {
	if iqn == "" || strings.ContainsAny(iqn, "/*") {
		return nil
	}
	b, err := root.ReadFile(pathpkg.Join(SMRefDir, iqn))
	if err != nil {
		return nil
	}
	var srs []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			srs = append(srs, l)
		}
	}
	return srs
}

// refuseSMShared refuses to create an SR on a target IQN that a SMAPIv1
// iSCSI SR uses: when sm detaches its last SR on the IQN from a host it
// logs out every session to it there (BaseISCSI.detach_and_delete ->
// iscsilib.logout all=True: iscsiadm -m node -T <iqn> -u), sanvol's
// included, whatever iface or node record they use (docs/iscsi-ng.md,
// "SMAPIv1 next door"). This host's sm reference files are read first;
// then, pool-wide, every lvmoiscsi/iscsi PBD's device-config through
// XenAPI, which also sees an SMAPIv1 SR that is unplugged here or plugged
// on other hosts only. xapi calls SR.create, so XenAPI answers; if it
// does not, the local check alone decides and the log says so.
func (t *Transport) refuseSMShared(ctx context.Context, op string, c *Config) error {
	fix := "put this SR's LUN on another target IQN of the array (one IQN per SR stack), or move the SMAPIv1 SR off this IQN first"
	if srs := SMAPIv1SRsOn(t.root, c.TargetIQN); len(srs) > 0 {
		return host.NewError(host.KindBusy, op,
			fmt.Sprintf("target %s is used by SMAPIv1 iSCSI SR(s) %s on this host (%s/%s): when sm detaches them it logs out every session to that IQN, this SR's too", c.TargetIQN, strings.Join(srs, ", "), SMRefDir, c.TargetIQN),
			fix, nil)
	}
	if t.smapiv1 == nil || c.TargetIQN == "" || strings.Contains(c.TargetIQN, "*") {
		return nil
	}
	srs, err := t.smapiv1.SMAPIv1ISCSISRsOn(ctx, c.TargetIQN)
	if err != nil {
		t.log.Warn("could not read the pool's SMAPIv1 iSCSI SRs through XenAPI; only this host's sm reference files were checked for a shared target IQN",
			zap.String("iqn", c.TargetIQN), zap.Error(err))
		return nil
	}
	if len(srs) == 0 {
		return nil
	}
	names := make([]string, len(srs))
	for i, s := range srs {
		names[i] = s.String()
	}
	return host.NewError(host.KindBusy, op,
		fmt.Sprintf("target %s is used by SMAPIv1 iSCSI SR(s) of this pool: %s (PBD device-config:targetIQN): when sm detaches one from a host it logs out every session to that IQN there, this SR's too", c.TargetIQN, strings.Join(names, "; ")),
		fix+" (xe pbd-list sr-uuid=<uuid> params=host-uuid,device-config shows where it is used)", nil)
}

// warnSMShared says at attach what refuseSMShared refuses at create: an
// SR that exists is attached all the same, so that its VMs keep running.
func (t *Transport) warnSMShared(c *Config) {
	if srs := SMAPIv1SRsOn(t.root, c.TargetIQN); len(srs) > 0 {
		t.log.Warn("a SMAPIv1 iSCSI SR shares this target IQN: its detach logs out this SR's sessions too; give each its own IQN (docs/iscsi-ng.md, SMAPIv1 next door)",
			zap.String("iqn", c.TargetIQN), zap.Strings("sm_srs", srs))
	}
}
