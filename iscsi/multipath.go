package iscsi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// DropInPath holds sanvol's multipath settings. multipath reads every file
// of /etc/multipath/conf.d (config_dir) after multipath.conf, in 0.4.9 as in
// 0.9.x, and XCP-ng keeps its own settings in multipath.conf, so a drop-in
// with only `multipaths` stanzas for our WWIDs changes nothing else.
const DropInPath = "/etc/multipath/conf.d/sanvol.conf"

// wwidsFile lists the WWIDs multipath treats as multipath devices, in
// 0.4.9 as in 0.9.x, one "/<wwid>/" per line.
const wwidsFile = "/etc/multipath/wwids"

// defaultPollingInterval is multipathd's checker interval in both 0.4.9 and
// 0.9.x when multipath.conf does not set one (XCP-ng does not).
const defaultPollingInterval = 5

const dropInHeader = `# Written by sanvol: multipath settings of the iscsi-ng SRs attached on this
# host, one stanza per LUN (by WWID). Nothing else is configured here, so
# XCP-ng's multipath.conf and any other conf.d file keep applying to every
# other device. sanvol rewrites this file on SR.attach and SR.detach.
`

// mpStanza is the part of a multipaths stanza sanvol sets.
type mpStanza struct {
	wwid        string
	noPathRetry string // "fail" or a count of checker intervals
}

var stanzaKeyRE = regexp.MustCompile(`^\s*(wwid|no_path_retry)\s+"?([^"\s]+)"?\s*$`)

// parseDropIn reads back a drop-in sanvol wrote.
func parseDropIn(text string) map[string]mpStanza {
	out := map[string]mpStanza{}
	var cur mpStanza
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "multipath {"):
			cur = mpStanza{}
		case trimmed == "}":
			if cur.wwid != "" {
				out[cur.wwid] = cur
			}
			cur = mpStanza{}
		default:
			if m := stanzaKeyRE.FindStringSubmatch(line); m != nil {
				if m[1] == "wwid" {
					cur.wwid = m[2]
				} else {
					cur.noPathRetry = m[2]
				}
			}
		}
	}
	return out
}

// renderDropIn writes the drop-in for a set of stanzas, sorted by WWID so
// that the same set always gives the same bytes.
func renderDropIn(stanzas map[string]mpStanza) string {
	wwids := make([]string, 0, len(stanzas))
	for w := range stanzas {
		wwids = append(wwids, w)
	}
	sort.Strings(wwids)
	var b strings.Builder
	b.WriteString(dropInHeader)
	b.WriteString("multipaths {\n")
	for _, w := range wwids {
		s := stanzas[w]
		// The alias makes the map /dev/mapper/<wwid> whatever
		// user_friendly_names says, as XCP-ng names its maps.
		fmt.Fprintf(&b, "\tmultipath {\n\t\twwid %s\n\t\talias %s\n\t\tno_path_retry %s\n\t}\n", s.wwid, s.wwid, s.noPathRetry)
	}
	b.WriteString("}\n")
	return b.String()
}

// noPathRetry converts the path-loss-policy into multipath's no_path_retry,
// which counts checker intervals.
func noPathRetry(queueSeconds, interval int) string {
	if queueSeconds == 0 {
		return "fail"
	}
	if interval <= 0 {
		interval = defaultPollingInterval
	}
	n := (queueSeconds + interval - 1) / interval
	return strconv.Itoa(max(n, 1))
}

// setStanza adds, changes or (with s == nil) removes the stanza of one
// WWID. It reports whether the file changed.
func (t *Transport) setStanza(ctx context.Context, wwid string, s *mpStanza) (bool, error) {
	unlock, err := transport.Lock(ctx, t.locker, t.to.Lock, "iscsi-ng: "+DropInPath, "iscsi-multipath-conf", "another sanvol call changing "+DropInPath)
	if err != nil {
		return false, err
	}
	defer unlock()
	old, err := t.root.ReadFile(DropInPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	stanzas := parseDropIn(string(old))
	if s == nil {
		if _, ok := stanzas[wwid]; !ok {
			return false, nil
		}
		delete(stanzas, wwid)
	} else {
		if cur, ok := stanzas[wwid]; ok && cur == *s {
			return false, nil
		}
		stanzas[wwid] = *s
	}
	if len(stanzas) == 0 {
		return true, t.root.Remove(DropInPath)
	}
	return true, t.root.WriteFileAtomic(DropInPath, []byte(renderDropIn(stanzas)), 0o644)
}

// errMultipathdDown is multipathd's client failing to reach the daemon.
var errMultipathdDown = errors.New("multipathd is not running")

// multipathd sends one command to the daemon. `-k"cmd"` is the form both
// 0.4.9 and 0.9.x accept; the reply "fail" is an error. A client that
// cannot reach the daemon says so in its own words ("ux_socket_connect:
// Connection refused", on stdout for 0.4.9, on stderr with a failed exit
// for 0.9.x), which are turned into errMultipathdDown here, once.
func (t *Transport) multipathd(ctx context.Context, cmd string) (string, error) {
	res, err := t.run.Run(ctx, host.Cmd{Name: "multipathd", Args: []string{"-k" + cmd}, Timeout: t.to.Command})
	out := strings.TrimSpace(string(res.Stdout))
	if err != nil {
		var ee *host.ExitError
		if errors.As(err, &ee) && (strings.Contains(ee.Stderr+ee.Stdout, "ux_socket_connect") || strings.Contains(ee.Stderr+ee.Stdout, "Connection refused")) {
			return out, fmt.Errorf("%w: %w", errMultipathdDown, err)
		}
		return out, err
	}
	if out == "fail" || strings.HasPrefix(out, "fail\n") {
		return out, fmt.Errorf("multipathd -k%q: fail", cmd)
	}
	if strings.Contains(out, "ux_socket_connect") {
		return out, fmt.Errorf("%w: multipathd -k%q: %s", errMultipathdDown, cmd, out)
	}
	return out, nil
}

func multipathdError(op string, err error) error {
	if errors.Is(err, host.ErrNotInstalled) {
		return host.NewError(host.KindUnsupported, op, "multipathd is not installed on this host", "install device-mapper-multipath (multipath-tools)", err)
	}
	if errors.Is(err, errMultipathdDown) {
		return host.NewError(host.KindUnsupported, op, "multipathd is not running on this host",
			"start it (systemctl enable --now multipathd); on XCP-ng enable multipathing for the host", err)
	}
	return nil
}

var pollingRE = regexp.MustCompile(`(?m)^\s*polling_interval\s+"?(\d+)"?`)

// pollingInterval reads multipathd's checker interval from its running
// configuration, so that a queueing time in seconds converts right.
func (t *Transport) pollingInterval(ctx context.Context) int {
	out, err := t.multipathd(ctx, "show config")
	if err != nil {
		return defaultPollingInterval
	}
	return parsePollingInterval(out)
}

// parsePollingInterval finds polling_interval in multipathd's `show
// config`, or the default when it is missing or not positive.
func parsePollingInterval(showConfig string) int {
	if m := pollingRE.FindStringSubmatch(showConfig); m != nil {
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			return n
		}
	}
	return defaultPollingInterval
}

// ensureMap makes sure a dm-multipath map holds the LUN's disks with this
// SR's settings, and waits for it.
func (t *Transport) ensureMap(ctx context.Context, op string, c *Config, disks []disk) (*dmMap, error) {
	op += ": multipath map " + c.WWID
	stanza := mpStanza{wwid: c.WWID, noPathRetry: noPathRetry(c.QueueSeconds, t.pollingInterval(ctx))}
	changed, err := t.setStanza(ctx, c.WWID, &stanza)
	if err != nil {
		return nil, host.NewError(host.KindInternal, op, "cannot write "+DropInPath, "check that /etc/multipath/conf.d is writable (read-only or full root filesystem?)", err)
	}
	if changed {
		// multipathd owns the queueing countdown, so it must learn
		// the stanza; a map built by `multipath` alone would lose
		// its no_path_retry at the daemon's next reload.
		if _, err := t.multipathd(ctx, "reconfigure"); err != nil {
			if e := multipathdError(op, err); e != nil {
				return nil, e
			}
			return nil, host.NewError(host.KindInternal, op, "multipathd did not take the new configuration", "run multipathd -k\"reconfigure\" and read its log", err)
		}
	}
	// With find_multipaths yes (XCP-ng) a LUN with one path gets no map
	// unless its WWID is in the wwids file.
	if wwids, _ := t.root.ReadFile(wwidsFile); !strings.Contains(string(wwids), "/"+c.WWID+"/") {
		if _, err := t.run.Run(ctx, host.Cmd{Name: "multipath", Args: []string{"-a", c.WWID}, Timeout: t.to.Command}); err != nil {
			if errors.Is(err, host.ErrNotInstalled) {
				return nil, multipathdError(op, err)
			}
			t.log.Debug("multipath -a failed", zap.Error(err))
		}
	}

	start := time.Now()
	// multipathd builds maps from uevents by itself; it is only prodded
	// after this grace period, and then once per kind of lack.
	grace := min(t.to.MapWait/4, time.Second)
	var askedMap, askedPaths, askedRename bool
	var m *dmMap
	var missing []string
	wctx, cancel := context.WithTimeout(ctx, t.to.MapWait)
	defer cancel()
	err = host.Poll(wctx, t.to.Poll, func(wctx context.Context) (bool, error) {
		var err error
		m, err = t.sys.findMap(c.WWID, disks)
		if err != nil {
			return false, host.NewError(host.KindInternal, op, "cannot read device-mapper state from sysfs", sysfsFix, err)
		}
		missing = nil
		if m != nil {
			for _, d := range disks {
				if !slices.Contains(m.slaves, d.name) {
					missing = append(missing, d.name)
				}
			}
			if len(missing) == 0 && m.name == c.WWID {
				return true, nil
			}
		}
		if wctx.Err() != nil || time.Since(start) < grace {
			return false, nil
		}
		switch {
		case m == nil && !askedMap:
			askedMap = true
			if _, err := t.multipathd(ctx, "add map "+c.WWID); err != nil {
				if e := multipathdError(op, err); e != nil {
					return false, e
				}
				t.log.Debug("multipathd add map failed, trying multipath", zap.Error(err))
				_, _ = t.run.Run(ctx, host.Cmd{Name: "multipath", Args: []string{c.WWID}, Timeout: t.to.Command})
			}
		case m != nil && len(missing) > 0 && !askedPaths:
			askedPaths = true
			for _, name := range missing {
				if _, err := t.multipathd(ctx, "add path "+name); err != nil {
					t.log.Debug("multipathd add path failed", zap.String("disk", name), zap.Error(err))
				}
			}
		case m != nil && m.name != c.WWID && !askedRename:
			// A map made before the stanza keeps its old name
			// until a reload applies the alias.
			askedRename = true
			_, _ = t.run.Run(ctx, host.Cmd{Name: "multipath", Args: []string{"-r", m.name}, Timeout: t.to.Command})
		}
		return false, nil
	})
	var te *host.TimeoutError
	switch {
	case err == nil:
		return m, nil
	case !errors.As(err, &te):
		return nil, err
	case ctx.Err() != nil:
		return nil, host.NewError(host.KindTimeout, op, "gave up waiting for the multipath map", "the call was cancelled; run SR.attach again", ctx.Err())
	case m != nil:
		t.log.Warn("multipath map is incomplete at the deadline", zap.String("map", m.name), zap.Strings("missing", missing))
		return m, nil
	}
	return nil, host.NewError(host.KindTimeout, op, fmt.Sprintf("no multipath map appeared within %s for disks %s", t.to.MapWait, diskNames(disks)),
		"check that multipathd runs and does not blacklist the array (multipath -v3 "+c.WWID+"; multipathd -k\"show config\")", nil)
}

// flushMap removes a map that nothing holds. `dmsetup remove` is never
// used on a live map: on a transient path failure it lets multipathd
// rebuild the map from the surviving paths only (research §2.1).
func (t *Transport) flushMap(ctx context.Context, op string, m *dmMap) error {
	op += ": flush multipath map " + m.name
	busy := func(msg string, cause error) error {
		return host.NewError(host.KindBusy, op, msg, "check what holds it (dmsetup info "+m.name+"; ls /sys/block/"+m.dev+"/holders; fuser -vm /dev/mapper/"+m.name+") and run SR.detach again", cause)
	}
	if len(m.holders) > 0 {
		return host.NewError(host.KindBusy, op, "the map is still in use by "+strings.Join(m.holders, ", "),
			"deactivate the SR's logical volumes first (lvs -o lv_name,lv_active on the SR's VG; dmsetup ls --tree)", nil)
	}
	// udev probes (blkid, LVM's rules) open the map for a moment after
	// every change to it; a flush in that moment fails with "map in use".
	t.settle(ctx)
	// Each try runs under ctx, not under the retry deadline: a flush
	// begun just before the deadline gets its own full timeout.
	var last error
	wctx, cancel := context.WithTimeout(ctx, t.to.Flush)
	defer cancel()
	err := host.Poll(wctx, time.Second, func(context.Context) (bool, error) {
		res, err := t.run.Run(ctx, host.Cmd{Name: "multipath", Args: []string{"-f", m.name}, Timeout: t.to.Flush})
		after, rerr := t.sys.findMap(m.wwid, nil)
		switch {
		case rerr != nil:
			return false, busy("cannot read device-mapper state after the flush", rerr)
		case after == nil:
			return true, nil
		case after.suspended:
			// A failed flush can leave the map suspended, and then
			// every sync() on the host hangs (azurelinux#18793).
			if _, rerr := t.run.Run(ctx, host.Cmd{Name: "dmsetup", Args: []string{"resume", after.name}, Timeout: t.to.Command}); rerr != nil {
				t.log.Error("could not resume a suspended multipath map", zap.String("map", after.name), zap.Error(rerr))
			}
			return false, busy("the flush failed and left the map suspended; it was resumed", err)
		case len(after.holders) > 0:
			return false, busy("the map is in use by "+strings.Join(after.holders, ", "), err)
		}
		// multipath's words are its only way of saying the map was open.
		inUse := strings.Contains(string(res.Stderr), "in use")
		var ee *host.ExitError
		if errors.As(err, &ee) {
			inUse = inUse || strings.Contains(ee.Stderr+ee.Stdout, "in use")
		}
		if err == nil {
			err = errors.New("map still present after multipath -f")
		}
		if !inUse {
			return false, busy("the map could not be removed", err)
		}
		last = err
		t.log.Debug("map briefly open, retrying the flush", zap.String("map", m.name))
		return false, nil
	})
	// Poll returns its own *TimeoutError unwrapped; busy's causes may
	// wrap anything, so only the outer error is looked at.
	if _, ok := err.(*host.TimeoutError); ok {
		return busy("the map could not be removed", last)
	}
	return err
}

// dmPathState is one path of a map as the kernel reports it.
type dmPathState struct {
	dev    string // major:minor
	active bool
	fails  int
}

// parseMultipathStatus reads the kernel's status line of a multipath
// target (`dmsetup status`), whose layout is the kernel's, not the tools':
//
//	<start> <len> multipath <#feat> <feat…> <#hwh> <hwh…> <#pg> <next pg>
//	  per group: <A|E|D> <#ps args> <ps args…> <#paths> <#path ps args>
//	    per path: <major:minor> <A|F> <fail count> <path ps args…>
func parseMultipathStatus(line string) ([]dmPathState, error) {
	f := strings.Fields(line)
	i := slices.Index(f, "multipath")
	if i < 0 {
		return nil, fmt.Errorf("not a multipath status line: %q", line)
	}
	i++
	num := func() (int, error) {
		if i >= len(f) {
			return 0, fmt.Errorf("multipath status ends early: %q", line)
		}
		n, err := strconv.Atoi(f[i])
		i++
		if err != nil || n < 0 {
			return 0, fmt.Errorf("multipath status: %q is not a count in %q", f[i-1], line)
		}
		return n, nil
	}
	skip := func() error {
		n, err := num()
		i += n
		return err
	}
	if err := skip(); err != nil { // features
		return nil, err
	}
	if err := skip(); err != nil { // hardware handler
		return nil, err
	}
	groups, err := num()
	if err != nil {
		return nil, err
	}
	if _, err := num(); err != nil { // next group
		return nil, err
	}
	var out []dmPathState
	for g := 0; g < groups; g++ {
		i++ // group state
		if err := skip(); err != nil {
			return nil, err
		}
		paths, err := num()
		if err != nil {
			return nil, err
		}
		args, err := num()
		if err != nil {
			return nil, err
		}
		for p := 0; p < paths; p++ {
			if i+2 >= len(f) {
				return nil, fmt.Errorf("multipath status ends early: %q", line)
			}
			fails, _ := strconv.Atoi(f[i+2])
			out = append(out, dmPathState{dev: f[i], active: f[i+1] == "A", fails: fails})
			i += 3 + args
		}
	}
	return out, nil
}

// pathStates asks the kernel for the state of every path of a map.
func (t *Transport) pathStates(ctx context.Context, name string) (map[string]dmPathState, error) {
	res, err := t.run.Run(ctx, host.Cmd{Name: "dmsetup", Args: []string{"status", name}, Timeout: t.to.Command})
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		if !strings.Contains(line, " multipath ") {
			continue
		}
		st, err := parseMultipathStatus(line)
		if err != nil {
			return nil, err
		}
		out := map[string]dmPathState{}
		for _, s := range st {
			out[s.dev] = s
		}
		return out, nil
	}
	return nil, fmt.Errorf("dmsetup status %s: no multipath target", name)
}

func diskNames(disks []disk) string {
	var n []string
	for _, d := range disks {
		n = append(n, d.name)
	}
	return strings.Join(n, ", ")
}
