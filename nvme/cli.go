package nvme

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tidwall/gjson"

	"github.com/sanvol/sanvol/host"
)

const nvmeCmd = "nvme"

// connectOptions is the options string a connect writes to
// /dev/nvme-fabrics, with the kernel's option names in the order libnvme
// writes them (src/nvme/fabrics.c, build_options): nqn first, then the
// transport address, the host identity, the DH-HMAC-CHAP keys, the queue
// and timeout settings. sanvol writes it itself instead of running
// `nvme connect --dhchap-secret=<key>`: a key on a command line is
// readable by every user in /proc/<pid>/cmdline. Every value was checked
// on the way in (NQNs, interface names and keys hold no ',' or '=' that
// would start another option).
func connectOptions(c Config, p Portal, id Identity) string {
	opts := []string{"nqn=" + c.NQN, "transport=tcp", "traddr=" + p.TrAddr()}
	if p.Iface != "" {
		opts = append(opts, "host_iface="+p.Iface)
	}
	opts = append(opts, "trsvcid="+strconv.Itoa(p.Port))
	if id.HostNQN != "" {
		opts = append(opts, "hostnqn="+id.HostNQN)
	}
	if id.HostID != "" {
		opts = append(opts, "hostid="+id.HostID)
	}
	if c.DHCHAP != "" {
		opts = append(opts, "dhchap_secret="+c.DHCHAP)
	}
	if c.DHCHAPCtrl != "" {
		opts = append(opts, "dhchap_ctrl_secret="+c.DHCHAPCtrl)
	}
	if c.NrIOQueues > 0 {
		opts = append(opts, "nr_io_queues="+strconv.Itoa(c.NrIOQueues))
	}
	if c.KeepAliveTmo > 0 {
		opts = append(opts, "keep_alive_tmo="+strconv.Itoa(c.KeepAliveTmo))
	}
	opts = append(opts, "reconnect_delay="+strconv.Itoa(c.ReconnectDelay), "ctrl_loss_tmo="+strconv.Itoa(c.CtrlLossTmo))
	return strings.Join(opts, ",")
}

// parseInstance reads the answer of /dev/nvme-fabrics to a connect,
// "instance=N,cntlid=M", into the controller's name.
func parseInstance(b []byte) (string, error) {
	for _, f := range strings.FieldsFunc(string(b), func(r rune) bool { return r == ',' || r == '\n' }) {
		if v, ok := strings.CutPrefix(f, "instance="); ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				return "nvme" + strconv.Itoa(n), nil
			}
		}
	}
	return "", fmt.Errorf("%s answered %q, without a controller instance", devFabrics, strings.TrimSpace(string(b)))
}

// isAlreadyConnected recognises both generations of nvme-cli: 1.x exits
// 114 (EALREADY) or 70 with "Operation already in progress", 2.x exits 1
// with "already connected" on stderr.
func isAlreadyConnected(err error) bool {
	if errors.Is(err, syscall.EALREADY) {
		return true // the kernel's own answer to a write of a duplicate
	}
	var ee *host.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	text := strings.ToLower(ee.Stderr + " " + ee.Stdout)
	if strings.Contains(text, "already connected") || strings.Contains(text, "operation already in progress") {
		return true
	}
	return ee.Code == 114 || ee.Code == 70
}

// connectClass is what a failed connect says about its cause.
type connectClass int

const (
	connectOther      connectClass = iota
	connectAuth                    // the target refused the DH-HMAC-CHAP exchange
	connectNoNetwork               // nothing answered at the TCP level
	connectNoDevice                // host-iface (or the fabrics device) is not there
	connectBadOptions              // the kernel refused the options string
)

// classOf reads the cause of a failed connect: from the kernel's errno
// when sanvol wrote /dev/nvme-fabrics itself, and from nvme-cli's own
// words (its only interface) when it ran `nvme connect` or `discover`.
func classOf(err error) connectClass {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EKEYREJECTED, syscall.ENOKEY, syscall.EACCES:
			return connectAuth
		case syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ETIMEDOUT,
			syscall.EHOSTDOWN, syscall.EADDRNOTAVAIL:
			return connectNoNetwork
		case syscall.ENODEV, syscall.ENXIO:
			return connectNoDevice
		case syscall.EINVAL:
			return connectBadOptions
		}
		return connectOther
	}
	var ee *host.ExitError
	if !errors.As(err, &ee) {
		return connectOther
	}
	text := strings.ToLower(ee.Stderr + " " + ee.Stdout)
	switch {
	case strings.Contains(text, "key was rejected"), strings.Contains(text, "authentication"),
		strings.Contains(text, "permission denied"), strings.Contains(text, "access denied"),
		strings.Contains(text, "required key not available"):
		return connectAuth
	case strings.Contains(text, "connection refused"), strings.Contains(text, "no route to host"),
		strings.Contains(text, "network is unreachable"), strings.Contains(text, "timed out"),
		strings.Contains(text, "host is down"), strings.Contains(text, "cannot assign requested address"):
		return connectNoNetwork
	case strings.Contains(text, "no such device"):
		return connectNoDevice
	case strings.Contains(text, "invalid argument"), strings.Contains(text, "unrecognized option"):
		return connectBadOptions
	}
	return connectOther
}

// portalDown wraps the cause of a connect that failed below NVMe (refused,
// no route, timed out at the TCP level): allFailed then knows, without
// reading any message, that asking the portal for its discovery log is
// pointless. Its text is the cause's.
type portalDown struct{ err error }

func (e portalDown) Error() string { return e.err.Error() }
func (e portalDown) Unwrap() error { return e.err }

// classifyConnect turns a failed `nvme connect` into a host.Error with
// the portal and a fix. The kernel's errno is the most reliable signal.
func classifyConnect(op string, p Portal, c Config, err error) error {
	var ce *host.CmdError
	if errors.As(err, &ce) {
		switch {
		case errors.Is(err, host.ErrNotInstalled):
			return host.NewError(host.KindUnsupported, op, "nvme-cli is not installed", "install it: yum install nvme-cli (XCP-ng) or apt-get install nvme-cli", err)
		case errors.Is(err, host.ErrTimeout):
			return host.NewError(host.KindUnreachable, op, "no answer from portal "+p.String(),
				"check that the portal address and port are right and reachable from this host (ping, nc -zv "+p.TrAddr()+" "+strconv.Itoa(p.Port)+")", err)
		}
		return host.NewError(host.KindInternal, op, "could not run nvme connect", "", err)
	}
	switch classOf(err) {
	case connectAuth:
		fix := "the target requires DH-HMAC-CHAP: set device-config:dhchap-password to the host key the target has for this host's NQN"
		if c.Auth() {
			fix = "check that dhchap-password is the key the target holds for this host's NQN (and dhchap-ctrl-password the controller key); update the XenAPI secret and re-plug"
		}
		return host.NewError(host.KindAuth, op, "portal "+p.String()+" refused DH-HMAC-CHAP authentication", fix, err)
	case connectNoNetwork:
		return host.NewError(host.KindUnreachable, op, "cannot reach portal "+p.String(),
			"check that the target listens on "+p.String()+" and that this host has a route to it", portalDown{err})
	case connectNoDevice:
		if p.Iface != "" {
			return host.NewError(host.KindInvalid, op, "host interface "+p.Iface+" does not exist on this host", "fix device-config:host-iface", err)
		}
	case connectBadOptions:
		return host.NewError(host.KindUnsupported, op, "the kernel refused the connect options for "+p.String(),
			"check the kernel log (dmesg | grep nvme); host-iface needs Linux 5.14+, dhchap keys Linux 6.0+", err)
	}
	return host.NewError(host.KindUnreachable, op, "cannot connect to subsystem "+c.NQN+" at portal "+p.String(),
		"check the NQN and that the target exports it on this portal to this host's NQN (dmesg | grep nvme shows the kernel's reason)", err)
}

// DiscoveryRecord is one entry of a discovery log page.
type DiscoveryRecord struct {
	TrType  string
	AdrFam  string
	SubType string
	TrAddr  string
	TrSvcID string
	SubNQN  string
	PortID  int64
}

// IsNVMSubsystem reports whether the record names an I/O subsystem (not
// a referral to another discovery controller).
func (r DiscoveryRecord) IsNVMSubsystem() bool {
	return strings.Contains(r.SubType, "nvme subsystem")
}

// ParseDiscovery reads `nvme discover -o json`. nvme-cli 1.x adds a
// "device" key; 2.0–2.2 print eflags as a number and 2.3+ as a string;
// both put the entries in "records". An empty output means an empty log.
func ParseDiscovery(b []byte) ([]DiscoveryRecord, error) {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, nil
	}
	if !gjson.Valid(s) {
		return nil, fmt.Errorf("nvme discover printed invalid JSON: %.200q", s)
	}
	root := gjson.Parse(s)
	if !root.IsObject() {
		return nil, fmt.Errorf("nvme discover printed %s, expected an object with \"records\"", root.Type)
	}
	var out []DiscoveryRecord
	for _, r := range root.Get("records").Array() {
		out = append(out, DiscoveryRecord{
			TrType:  strings.TrimSpace(r.Get("trtype").String()),
			AdrFam:  strings.TrimSpace(r.Get("adrfam").String()),
			SubType: strings.TrimSpace(r.Get("subtype").String()),
			TrAddr:  strings.TrimSpace(r.Get("traddr").String()),
			TrSvcID: strings.TrimSpace(r.Get("trsvcid").String()),
			SubNQN:  strings.TrimSpace(r.Get("subnqn").String()),
			PortID:  r.Get("portid").Int(),
		})
	}
	return out, nil
}

// ListedPath is one controller in `nvme list-subsys` output.
type ListedPath struct {
	Name      string
	Transport string
	Address   map[string]string
	State     string
}

// ListedSubsystem is one subsystem in `nvme list-subsys` output.
type ListedSubsystem struct {
	HostNQN  string
	Name     string
	NQN      string
	IOPolicy string // only some 2.x versions print it; sysfs is authoritative
	Paths    []ListedPath
}

// ParseListSubsys reads `nvme list-subsys -o json` in every shape seen:
// 1.x `{"Subsystems":[…]}` (key omitted when empty), 2.x `[{"HostNQN",
// "Subsystems":[…]}]`, the bare host object some builds print, and "{}".
func ParseListSubsys(b []byte) ([]ListedSubsystem, error) {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, nil
	}
	if !gjson.Valid(s) {
		return nil, fmt.Errorf("nvme list-subsys printed invalid JSON: %.200q", s)
	}
	root := gjson.Parse(s)
	var hosts []gjson.Result
	switch {
	case root.IsArray():
		hosts = root.Array()
	case root.IsObject():
		hosts = []gjson.Result{root}
	default:
		return nil, fmt.Errorf("nvme list-subsys printed %s, expected an object or array", root.Type)
	}
	var out []ListedSubsystem
	for _, h := range hosts {
		for _, sub := range h.Get("Subsystems").Array() {
			ls := ListedSubsystem{
				HostNQN:  h.Get("HostNQN").String(),
				Name:     sub.Get("Name").String(),
				NQN:      sub.Get("NQN").String(),
				IOPolicy: sub.Get("IOPolicy").String(),
			}
			for _, p := range sub.Get("Paths").Array() {
				ls.Paths = append(ls.Paths, ListedPath{
					Name:      p.Get("Name").String(),
					Transport: p.Get("Transport").String(),
					Address:   parseAddress(p.Get("Address").String()),
					State:     p.Get("State").String(),
				})
			}
			out = append(out, ls)
		}
	}
	return out, nil
}

// parseVersion reads the first line of `nvme version`: "nvme version 2.3
// (git 2.3)" or "nvme version 1.16".
func parseVersion(b []byte) string {
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	f := strings.Fields(line)
	if len(f) >= 3 && f[0] == "nvme" && f[1] == "version" {
		return f[2]
	}
	return strings.TrimSpace(line)
}

// runNVMe runs nvme-cli with the secrets of c redacted.
func runNVMe(ctx context.Context, r host.Runner, timeout time.Duration, c Config, args ...string) (host.Result, error) {
	return r.Run(ctx, host.Cmd{Name: nvmeCmd, Args: args, Timeout: timeout, Secrets: []string{c.DHCHAP, c.DHCHAPCtrl}})
}
