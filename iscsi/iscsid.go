package iscsi

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// iscsidUnit is the unit sm starts. XCP-ng 8.x ships iscsid.service and
// iscsi.service disabled (its systemd preset), and sm starts the daemon
// on demand: xcp-ng/sm drivers/iscsilib.py, ensure_daemon_running_ok ->
// restart_daemon runs `systemctl start iscsid.service` when
// is_iscsi_daemon_running (`systemctl is-active iscsid.service`) says no.
// sanvol does the same start, and deliberately not the rest of
// restart_daemon: that one also deletes /var/lib/iscsi/nodes and
// send_targets, which would drop every other SR's node records.
const iscsidUnit = "iscsid.service"

// iscsidRunning reports whether a process named iscsid exists. /proc is
// read rather than asking systemctl so that the common case (running)
// costs no command, and a daemon started outside systemd counts too.
func (t *Transport) iscsidRunning() bool {
	return len(host.ProcessesNamed(t.root, "iscsid")) > 0
}

// ensureIscsid starts iscsid the way sm does when it is not running, so
// that iscsiadm's discovery, login and logout (all of which go through
// iscsid's IPC socket) work on a freshly booted XCP-ng host where no SR
// has needed iSCSI yet. A unit that fails to start is an error naming
// the journal; a host without systemctl keeps the old behaviour (iscsiadm
// itself then reports that iscsid is not running).
func (t *Transport) ensureIscsid(ctx context.Context, op string) error {
	if t.iscsidRunning() {
		return nil
	}
	cmd := host.Cmd{Name: "systemctl", Args: []string{"start", iscsidUnit}, Timeout: t.to.Command}
	if _, err := t.run.Run(ctx, cmd); err != nil {
		if errors.Is(err, host.ErrNotInstalled) {
			t.log.Warn("iscsid is not running and systemctl is not installed: cannot start it", zap.String("op", op))
			return nil
		}
		return host.NewError(host.KindUnsupported, op, "iscsid is not running on this host and `systemctl start "+iscsidUnit+"` failed",
			"see journalctl -u iscsid; check that iscsi-initiator-utils is installed and "+initiatorFile+" names this host", err)
	}
	// Logged at Info: the admin sees in syslog why iscsid runs although
	// XCP-ng's preset keeps it disabled.
	t.log.Info("iscsid was not running: started it as sm does (systemctl start "+iscsidUnit+"; the unit stays disabled)",
		zap.String("op", op))
	return nil
}
