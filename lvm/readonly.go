package lvm

import (
	"strings"

	"github.com/sanvol/sanvol/host"
)

// lvm2 2.02.180 refuses a metadata-changing command under
// global/metadata_read_only=1 with "<command line>: Command not permitted
// while global/metadata_read_only is set." and still exits 0 (seen in the
// lab with XCP-ng 8.x dom0's build: lvmcmdline.c leaves the command's
// return value unset on that path). Its locking layer's refusal ("Operation
// prohibited while global/metadata_read_only is set.") fails normally.
// An exit status of 0 is therefore no proof that a change was made: every
// command's output is checked for the refusal, whatever its exit status.

// readOnlyRefusal returns a KindNotMaster error when a command that exited
// 0 printed LVM's metadata_read_only refusal, nil otherwise.
func readOnlyRefusal(op string, argv []string, res host.Result) error {
	out := strings.ToLower(string(res.Stderr) + "\n" + string(res.Stdout))
	if !containsAny(out, readOnlyText) {
		return nil
	}
	cause := &host.ExitError{Cmd: "lvm " + strings.Join(argv, " "), Code: res.ExitCode,
		Stderr: strings.TrimSpace(string(res.Stderr)), Stdout: strings.TrimSpace(string(res.Stdout))}
	return host.NewError(host.KindNotMaster, op,
		"LVM refused to change metadata because global/metadata_read_only is set (it exited 0 all the same, as lvm2 2.02 does)",
		"run the operation on the pool master; on the master, sanvol's --config sets metadata_read_only=0, so check what overrides it (`lvm dumpconfig global/metadata_read_only`, LVM_SYSTEM_DIR, profiles)",
		cause)
}
