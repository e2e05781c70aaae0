package doctor

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/iscsi"
)

const (
	initiatorFile  = iscsi.InitiatorFile
	scopeISCSIHost = "this host (iscsi-ng)"
)

func (r *run) checkISCSIHost(ctx context.Context) {
	r.checkIscsid(ctx)
	r.checkDaemon(chkMultipathd, "multipathd", "systemctl enable --now multipathd")
	local := r.checkInitiatorIQN()
	r.checkPoolIQN(ctx, local)
}

// running lists the PIDs of the processes named name (host.Processes
// reads /proc, which works with or without systemd).
func (r *run) running(name string) []string {
	var pids []string
	for _, pid := range host.ProcessesNamed(r.d.Root, name) {
		pids = append(pids, strconv.Itoa(pid))
	}
	return pids
}

func (r *run) checkDaemon(id, name, fix string) {
	if pids := r.running(name); len(pids) > 0 {
		r.add(result(id, scopeISCSIHost, Pass, name+" is running (pid "+strings.Join(pids, ",")+")", nil, ""))
		return
	}
	r.add(result(id, scopeISCSIHost, Fail, name+" is not running", []string{"no process named " + name + " in /proc"}, fix))
}

// checkIscsid reports whether iscsid runs and, when it does not, whether
// sanvol can start it. XCP-ng 8.x keeps iscsid.service disabled by preset
// and sm starts it on demand (xcp-ng/sm drivers/iscsilib.py,
// ensure_daemon_running_ok -> restart_daemon: systemctl start
// iscsid.service); the iscsi-ng transport does the same before discovery,
// login and logout, so "enable it" would be the wrong advice there.
// Sessions without iscsid are another matter: the kernel keeps them, but
// nothing re-logs a path in after an error, so that is a failure.
func (r *run) checkIscsid(ctx context.Context) {
	const unit = iscsi.IscsidUnit
	if pids := r.running("iscsid"); len(pids) > 0 {
		r.add(result(chkISCSId, scopeISCSIHost, Pass, "iscsid is running (pid "+strings.Join(pids, ",")+")", nil, ""))
		return
	}
	ev := []string{"no process named iscsid in /proc"}
	sessions, _ := r.tr.iscsi.Sessions()
	// LoadState without --value: CentOS 7's systemd 219 predates it.
	res, err := r.d.Runner.Run(ctx, host.Cmd{Name: "systemctl", Args: []string{"show", "-p", "LoadState", unit}, Timeout: 10 * time.Second})
	state := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(res.Stdout)), "LoadState="))
	switch {
	case err != nil:
		ev = append(ev, "systemctl show "+unit+": "+err.Error())
		r.add(result(chkISCSId, scopeISCSIHost, Fail, "iscsid is not running and sanvol cannot start it: systemctl does not answer", ev,
			"start iscsid by hand (iscsid), or install iscsi-initiator-utils (Debian: open-iscsi)"))
	case state != "loaded":
		ev = append(ev, unit+" LoadState="+orDash(state))
		r.add(result(chkISCSId, scopeISCSIHost, Fail, "iscsid is not running and sanvol cannot start it: "+unit+" is not installed", ev,
			"yum install -y iscsi-initiator-utils   (Debian: apt-get install open-iscsi)"))
	case len(sessions) > 0:
		ev = append(ev, fmt.Sprintf("%d iSCSI session(s) in /sys/class/iscsi_session", len(sessions)))
		r.add(result(chkISCSId, scopeISCSIHost, Fail,
			"iscsid is not running while iSCSI sessions exist: a path that fails is never logged in again", ev,
			"systemctl start "+unit+"   # XCP-ng keeps the unit disabled by preset; starting it is what sm and sanvol do"))
	default:
		r.add(result(chkISCSId, scopeISCSIHost, Pass,
			"iscsid is not running; sanvol starts it (systemctl start "+unit+") at the next iscsi-ng attach or probe, as sm does", ev, ""))
	}
}

// distroIQNs are the prefixes distribution packages generate initiator
// names with at install time: every machine cloned from that install (a
// template, an image) carries the same name.
var distroIQNs = []string{
	"iqn.1993-08.org.debian:", "iqn.2004-10.com.ubuntu:", "iqn.1994-05.com.redhat:",
	"iqn.1996-04.de.suse:", "iqn.2005-03.org.open-iscsi:", "iqn.2016-04.com.open-iscsi:",
}

var placeholderIQN = regexp.MustCompile(`(?i)(:default|:changeme|:unknown|:)$`)

func (r *run) iqnFix() string {
	name := strings.ReplaceAll(hostname(r.d.Root), " ", "-")
	iqn := "iqn." + r.rep.Time.Format("2006-01") + ".<your reversed domain>:" + name
	if onXCPng(r.d.Root) {
		return fmt.Sprintf("xe host-param-set uuid=%s iscsi_iqn=%s   # xapi rewrites %s and restarts iscsid\n# then allow the new IQN on the array and re-plug the iscsi-ng SRs on this host", r.thisHost(), iqn, initiatorFile)
	}
	return fmt.Sprintf("echo 'InitiatorName=%s' > %s && systemctl restart iscsid\n# then allow the new IQN on the array and re-plug the iscsi-ng SRs on this host", iqn, initiatorFile)
}

func (r *run) checkInitiatorIQN() string {
	iqn, err := r.tr.iscsi.InitiatorName()
	var he *host.Error
	switch {
	case errors.As(err, &he) && he.Err != nil:
		r.add(result(chkIQN, scopeISCSIHost, Fail, "no initiator name: "+initiatorFile+" is unreadable", []string{he.Err.Error()}, r.iqnFix()))
		return ""
	case err != nil:
		r.add(result(chkIQN, scopeISCSIHost, Fail, "no InitiatorName in "+initiatorFile, nil, r.iqnFix()))
		return ""
	case iscsi.CheckIQN(iqn) != nil:
		r.add(result(chkIQN, scopeISCSIHost, Fail, fmt.Sprintf("InitiatorName %q is not an iSCSI name", iqn),
			[]string{"InitiatorName " + iscsi.CheckIQN(iqn).Error()}, r.iqnFix()))
		return iqn
	case placeholderIQN.MatchString(iqn):
		r.add(result(chkIQN, scopeISCSIHost, Fail, fmt.Sprintf("InitiatorName %s is a placeholder", iqn), nil, r.iqnFix()))
		return iqn
	}
	for _, p := range distroIQNs {
		if strings.HasPrefix(iqn, p) {
			r.add(result(chkIQN, scopeISCSIHost, Warn,
				fmt.Sprintf("InitiatorName %s is the one the distribution package generated: hosts installed from one image share it", iqn),
				[]string{initiatorFile + ": InitiatorName=" + iqn}, r.iqnFix()))
			return iqn
		}
	}
	r.add(result(chkIQN, scopeISCSIHost, Pass, "InitiatorName "+iqn, nil, ""))
	return iqn
}

func (r *run) checkPoolIQN(ctx context.Context, local string) {
	if local == "" {
		r.add(result(chkPoolIQN, "pool", Warn, "cannot check pool-wide uniqueness: this host has no initiator name", nil, r.iqnFix()))
		return
	}
	hosts, self, ok := r.poolHosts(ctx, chkPoolIQN)
	if !ok {
		return
	}
	var ev []string
	if me := findHost(hosts, self); me.IQN != "" && me.IQN != local {
		ev = append(ev, fmt.Sprintf("xapi records iscsi_iqn=%s for this host but %s says %s: xapi writes its record back to the file when it changes", me.IQN, initiatorFile, local))
	}
	r.uniqueInPool(chkPoolIQN, "initiator IQN", local, hosts, self, func(h PoolHost) string { return h.IQN }, ev, r.iqnFix(),
		"set an IQN on each host listed: xe host-param-set uuid=<host> iscsi_iqn=<unique IQN>")
}

// checkNodeRecords compares the SR's node records (read at every login)
// and its live sessions (recovery_tmo) with the replacement timeout the
// SR asks for.
func (r *run) checkNodeRecords(ctx context.Context, s *subject, paths []path) {
	want := s.iscsi.ReplacementTimeout
	sess, _ := r.tr.iscsi.Sessions()
	addrs := portalAddrs(s)
	targets := targetIQNs(s, sess)
	if len(targets) == 0 {
		r.add(result(chkNodeRecords, s.scope(), Skip, "no target IQN known and no session yet: sanvol writes the node records when it attaches the SR", nil, ""))
		return
	}
	var ev, bad, fix []string
	seen := 0
	for _, t := range targets {
		for _, p := range paths {
			iface := iscsi.IfaceName(p.Bound)
			rec, found, err := r.tr.iscsi.NodeRecord(ctx, t, iscsi.Portal{Addr: p.Portal.Addr.String(), Port: p.Portal.Port}, iface)
			sel := fmt.Sprintf("-T %s -p %s -I %s", t, p.Portal, iface)
			switch {
			case err == nil && !found:
				ev = append(ev, "no node record "+sel)
				continue
			case errors.Is(err, host.ErrNotInstalled):
				r.add(result(chkNodeRecords, s.scope(), Fail, "iscsiadm is not installed", []string{err.Error()}, "yum install -y iscsi-initiator-utils"))
				return
			case err != nil:
				ev = append(ev, "iscsiadm -m node "+sel+": "+err.Error())
				bad = append(bad, "node record "+sel+" unreadable")
				continue
			}
			seen++
			got := rec["node.session.timeo.replacement_timeout"]
			ev = append(ev, fmt.Sprintf("node %s: replacement_timeout=%s startup=%s", sel, got, rec["node.startup"]))
			if got != strconv.Itoa(want) {
				bad = append(bad, fmt.Sprintf("node %s has replacement_timeout=%s, want %d", sel, got, want))
				fix = append(fix, fmt.Sprintf("iscsiadm -m node %s -o update -n node.session.timeo.replacement_timeout -v %d", sel, want))
			}
			if st := rec["node.startup"]; st != "" && st != "manual" {
				bad = append(bad, fmt.Sprintf("node %s logs in at boot (node.startup=%s): sessions appear before xapi plugs the SR", sel, st))
				fix = append(fix, fmt.Sprintf("iscsiadm -m node %s -o update -n node.startup -v manual", sel))
			}
		}
	}
	for _, se := range sess {
		if !addrs[se.Portal.Addr] || !contains(targets, se.Target) {
			continue
		}
		ev = append(ev, fmt.Sprintf("session %d to %s at %s: recovery_tmo=%d", se.ID, se.Target, se.Portal.Addr, se.RecoveryTmo))
		if se.RecoveryTmo != want {
			bad = append(bad, fmt.Sprintf("session %d has recovery_tmo=%d, want %d", se.ID, se.RecoveryTmo, want))
			fix = append(fix, fmt.Sprintf("echo %d > /sys/class/iscsi_session/session%d/recovery_tmo", want, se.ID))
		}
	}
	switch {
	case len(bad) > 0:
		r.add(result(chkNodeRecords, s.scope(), Fail, strings.Join(bad, "; "), ev, strings.Join(fix, "\n")))
	case seen == 0 && s.SR != "":
		r.add(result(chkNodeRecords, s.scope(), Fail, "the attached SR has no node records", ev,
			"re-plug the SR on this host, which rewrites them: xe pbd-unplug uuid=<PBD> && xe pbd-plug uuid=<PBD>"))
	case seen == 0:
		r.add(result(chkNodeRecords, s.scope(), Skip, "no node records yet: sanvol writes them when it attaches the SR", ev, ""))
	default:
		r.add(result(chkNodeRecords, s.scope(), Pass, fmt.Sprintf("replacement_timeout=%d on every node record and session", want), ev, ""))
	}
}

// portalAddrs is the set of the subject's portal addresses, spelled as
// the transport spells a session's.
func portalAddrs(s *subject) map[string]bool {
	addrs := map[string]bool{}
	for _, p := range s.iscsi.Portals {
		addrs[p.Addr] = true
	}
	return addrs
}

// targetIQNs is the SR's target IQN or, for none or the wildcard, the
// IQNs of the sessions to its portals.
func targetIQNs(s *subject, sess []iscsi.Session) []string {
	if iqn := s.iscsi.TargetIQN; iqn != "" && iqn != iscsi.WildcardIQN {
		return []string{iqn}
	}
	addrs := portalAddrs(s)
	var iqns []string
	for _, se := range sess {
		if addrs[se.Portal.Addr] {
			iqns = append(iqns, se.Target)
		}
	}
	return dedupSorted(iqns)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// checkMap verifies what the iscsi-ng transport applies to the SR's
// dm-multipath map: the stanza is loaded by multipathd with the
// no_path_retry of the SR's path-loss-policy, and the map's table queues
// (or fails) I/O accordingly.
func (r *run) checkMap(ctx context.Context, s *subject) {
	wwid := s.iscsi.WWID
	if wwid == "" {
		r.add(result(chkMap, s.scope(), Skip, "no SCSIid in the device-config yet", nil, ""))
		return
	}
	var ev []string
	m, err := r.tr.iscsi.FindMap(wwid)
	if err != nil {
		ev = append(ev, err.Error())
	}
	if m == nil {
		if s.SR == "" {
			r.add(result(chkMap, s.scope(), Skip, "no multipath map for "+wwid+" yet: sanvol builds it when it attaches the SR", ev, ""))
		} else {
			r.add(result(chkMap, s.scope(), Fail, "the attached SR has no multipath map for "+wwid, ev,
				"multipathd -k\"add map "+wwid+"\"   # or re-plug the SR: xe pbd-unplug uuid=<PBD> && xe pbd-plug uuid=<PBD>"))
		}
		return
	}
	ev = append(ev, fmt.Sprintf("map %s (%s)", m.Name, m.Dev))
	queue := s.iscsi.QueueSeconds
	mpd, err := r.tr.iscsi.RunningMultipathd(ctx)
	if err != nil {
		r.add(result(chkMap, s.scope(), Fail, "cannot read multipathd's configuration", []string{err.Error()}, "systemctl restart multipathd"))
		return
	}
	want := iscsi.NoPathRetry(queue, mpd.PollingInterval)
	ev = append(ev, fmt.Sprintf("path-loss-policy %s → no_path_retry %s (polling_interval %d)", policyText(queue), want, mpd.PollingInterval))
	var bad, fix []string
	switch npr := mpd.NoPathRetry[wwid]; npr {
	case "":
		bad = append(bad, "multipathd has no stanza for "+wwid)
		fix = append(fix, "grep -A4 "+wwid+" "+iscsi.DropInPath+"   # the stanza sanvol wrote", "multipathd -k\"reconfigure\"")
	case want:
		ev = append(ev, "multipathd: no_path_retry "+npr)
	default:
		bad = append(bad, fmt.Sprintf("multipathd runs no_path_retry %s for %s, want %s", npr, wwid, want))
		fix = append(fix, "multipathd -k\"reconfigure\"   # or re-plug the SR, which rewrites "+iscsi.DropInPath)
	}
	tab, err := r.tr.iscsi.MapTable(ctx, m.Name)
	if err != nil {
		bad = append(bad, "cannot read the map's table: "+err.Error())
	} else {
		line := strings.TrimSpace(tab)
		ev = append(ev, "dmsetup table "+m.Name+": "+line)
		queues := strings.Contains(line, "queue_if_no_path")
		switch {
		case queue > 0 && !queues:
			bad = append(bad, "the map does not queue I/O when every path is down (no queue_if_no_path)")
			fix = append(fix, fmt.Sprintf("dmsetup message %s 0 queue_if_no_path", m.Name))
		case queue == 0 && queues:
			bad = append(bad, "the map queues I/O when every path is down (queue_if_no_path), the SR's policy is to fail it")
			fix = append(fix, fmt.Sprintf("dmsetup message %s 0 fail_if_no_path", m.Name))
		}
	}
	if len(bad) > 0 {
		r.add(result(chkMap, s.scope(), Fail, strings.Join(bad, "; "), ev, strings.Join(fix, "\n")))
		return
	}
	r.add(result(chkMap, s.scope(), Pass, fmt.Sprintf("map %s: no_path_retry %s, %s", m.Name, want, policyText(queue)), ev, ""))
}

func policyText(queue int) string {
	if queue == 0 {
		return "fail I/O when every path is down"
	}
	return fmt.Sprintf("queue I/O for %d s when every path is down", queue)
}

// checkSMShared reports a SMAPIv1 iSCSI SR on the target IQN of a sanvol
// SR: one attached here (sm's reference file) or, through XenAPI, one of
// the pool whose PBD names the IQN on any host. sm does not know sanvol's
// sessions: when its last SR on the IQN detaches from a host it logs out
// every session to that IQN there (BaseISCSI detach_and_delete ->
// iscsilib.logout all=True, `iscsiadm -m node -T <iqn> -u`, which matches
// sessions by target name whatever their iface or node record); a raw
// iscsi SR's detach also deletes every node record of the IQN
// (RawISCSISR.detach -> iscsilib.delete). docs/iscsi-ng.md, "SMAPIv1 next
// door", gives the decision: one target IQN per SR stack.
func (r *run) checkSMShared(ctx context.Context, s *subject) {
	sess, _ := r.tr.iscsi.Sessions()
	iqns := targetIQNs(s, sess)
	var ev []string
	var poolErr error
	for _, q := range iqns {
		srs := iscsi.SMAPIv1SRsOn(r.d.Root, q)
		if len(srs) > 0 {
			ev = append(ev, fmt.Sprintf("%s/%s lists SMAPIv1 SR(s) %s attached here on %s", iscsi.SMRefDir, q, strings.Join(srs, ", "), q))
		}
		if r.d.SMAPIv1 == nil || poolErr != nil {
			continue
		}
		pool, err := r.d.SMAPIv1.SMAPIv1ISCSISRsOn(ctx, q)
		if err != nil {
			poolErr = err
			continue
		}
		for _, p := range pool {
			ev = append(ev, fmt.Sprintf("XenAPI: SMAPIv1 SR %s has device-config:targetIQN=%s", p, q))
		}
	}
	if len(ev) == 0 {
		msg := "no SMAPIv1 iSCSI SR (lvmoiscsi, iscsi) of the pool uses this SR's target IQN"
		if r.d.SMAPIv1 == nil || poolErr != nil {
			msg = "no SMAPIv1 iSCSI SR (lvmoiscsi, iscsi) is attached here on this SR's target IQN"
		}
		var pev []string
		if poolErr != nil {
			pev = []string{"the pool's SRs could not be read through XenAPI, so only this host's were checked: " + poolErr.Error()}
		}
		r.add(result(chkSMShared, s.scope(), Pass, msg, pev, ""))
		return
	}
	r.add(result(chkSMShared, s.scope(), Fail,
		"a SMAPIv1 iSCSI SR shares this SR's target IQN: when sm detaches it, it logs out every session to the IQN, sanvol's too, and this SR loses its paths",
		ev,
		"give each SR stack its own target IQN on the array (move the LUN of one of them to another target); until then do not unplug, forget or destroy the SMAPIv1 SR while this SR is plugged, and re-plug this SR (xe pbd-unplug / xe pbd-plug) if it lost its paths"))
}
