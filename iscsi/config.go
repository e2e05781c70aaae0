package iscsi

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// The device-config keys of an iscsi-ng SR. chappassword and
// incoming_chappassword end in "password" on purpose: xapi moves such
// values into XenAPI secrets and passes "<key>_secret" = uuid instead.
const (
	KeyTarget             = "target"
	KeyPort               = "port"
	KeyTargetIQN          = "targetIQN"
	KeySCSIid             = "SCSIid"
	KeyChapUser           = "chapuser"
	KeyChapPassword       = "chappassword"
	KeyIncomingUser       = "incoming_chapuser"
	KeyIncomingPassword   = "incoming_chappassword"
	KeyIface              = "iface"
	KeyReplacementTimeout = "replacement-timeout"
	KeyPathLossPolicy     = "path-loss-policy"
	secretSuffix          = "_secret"
)

// Defaults and limits of the tunable keys.
const (
	defaultPort = 3260
	// defaultReplacementTimeout follows the NexentaStor guide: a dead
	// session hands its I/O to dm-multipath after 10 s instead of the
	// open-iscsi default of 120 s, which would stall every write for
	// two minutes when one portal goes away.
	defaultReplacementTimeout = 10
	maxReplacementTimeout     = 600
	// defaultQueueSeconds is how long the map queues I/O when every path
	// is down (docs/iscsi-ng.md, "path-loss-policy", gives the reasons).
	defaultQueueSeconds = 60
	maxQueueSeconds     = 3600
	// wildcardIQN asks for every IQN the portals return, for arrays that
	// expose one IQN per portal (Citrix multipathing guide).
	wildcardIQN = "*"
)

// ConfigKeys documents every device-config key for Plugin.query.
func (t *Transport) ConfigKeys() map[string]string {
	return map[string]string{
		KeyTarget: "Portal addresses of the array, comma-separated: IPv4, IPv6 (bare or [addr]:port) or host names, " +
			"each optionally with :port. One iSCSI session is made per portal (and per iface binding).",
		KeyPort: fmt.Sprintf("TCP port of the portals that do not name one (default %d).", defaultPort),
		KeyTargetIQN: "Target IQN, as listed by sr-probe. '*' logs in to every IQN that each portal returns at its own " +
			"address, for arrays that expose one IQN per portal.",
		KeySCSIid: "SCSI WWID of the LUN that holds the SR (page 0x83 identifier as multipath names it, e.g. 36001405...); " +
			"sr-probe lists them. The LUN is found by this identity on every host, never by device name.",
		KeyChapUser:     "CHAP user name the initiator presents, for discovery and login (optional).",
		KeyChapPassword: "CHAP secret for chapuser; xapi stores it as a secret and passes chappassword_secret.",
		KeyIncomingUser: "Mutual CHAP: user name the target must present back (optional, needs chapuser).",
		KeyIncomingPassword: "Mutual CHAP secret for incoming_chapuser; xapi passes it as " +
			"incoming_chappassword_secret.",
		KeyIface: "Optional NIC bindings, comma-separated. 'eth1' sends every portal through eth1 (one session per " +
			"NIC and portal); 'eth1=10.0.1.10' binds one portal to one NIC. sanvol creates iscsiadm iface records " +
			"named sanvol-<nic>.",
		KeyReplacementTimeout: fmt.Sprintf("Seconds a failed session holds I/O before failing it to dm-multipath "+
			"(node.session.timeo.replacement_timeout of this SR's node records only; default %d).",
			defaultReplacementTimeout),
		KeyPathLossPolicy: fmt.Sprintf("What the multipath map does when every path is down: 'queue' (default: "+
			"queue I/O for %d s, then fail it), 'queue:<seconds>' (queue for that long, up to %d) or 'fail' "+
			"(fail I/O at once). Applies to this SR's map only.", defaultQueueSeconds, maxQueueSeconds),
	}
}

// Portal is one iSCSI portal: an IP address and a TCP port.
type Portal struct {
	Addr string // an IP address, never bracketed
	Port int
}

// String is the portal as iscsiadm -p takes it and as sysfs and the
// discovery output print it: a.b.c.d:port or [v6]:port.
func (p Portal) String() string {
	return net.JoinHostPort(p.Addr, strconv.Itoa(p.Port))
}

// chap is one direction of CHAP.
type chap struct {
	user     string
	password string
}

// binding sends a portal (or every portal when portal is empty) through one
// NIC.
type binding struct {
	nic    string
	portal string // as written in the target key, "" for all portals
}

// ifaceName is the iscsiadm iface record sanvol keeps for a NIC.
func ifaceName(nic string) string { return "sanvol-" + nic }

// Config is an iscsi-ng device-config, parsed and validated: what
// SR.attach acts on and what `sanvol doctor` checks, so that the two
// never read an SR differently.
type Config struct {
	Portals []Portal
	// PortalText is what the admin wrote for each portal, for messages
	// and for matching iface bindings.
	PortalText []string
	// TargetIQN is "", WildcardIQN or an IQN.
	TargetIQN string
	// WWID is SCSIid as multipath names the LUN's map; "" when not given.
	WWID     string
	chap     *chap
	mutual   *chap
	bindings []binding
	// ReplacementTimeout is node.session.timeo.replacement_timeout, in
	// seconds.
	ReplacementTimeout int
	// QueueSeconds is the path-loss-policy: 0 fails I/O at once when no
	// path is left, N > 0 queues it for N seconds.
	QueueSeconds int
}

// parseNeeds says which keys a caller requires and whether secrets must be
// resolved (detach and health never need the CHAP passwords).
type parseNeeds struct {
	iqn     bool
	wwid    bool
	secrets bool
}

// The lengths are checked apart from the character classes: a bounded
// repetition such as {3,254} compiles into that many copies of its class,
// which cost every sanvol process (every method call) milliseconds at
// start natively and a large multiple of that in the lab's emulated guest.
var (
	wwidCharsRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z_.:-]*$`)
	nicCharsRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)
)

// validWWID: 4 to 255 characters, a letter or digit first.
func validWWID(w string) bool { return len(w) >= 4 && len(w) <= 255 && wwidCharsRE.MatchString(w) }

// validNIC: a Linux interface name, at most 15 characters (IFNAMSIZ-1).
func validNIC(n string) bool { return len(n) >= 1 && len(n) <= 15 && nicCharsRE.MatchString(n) }

// parseConfig validates a device-config. lookup resolves host names in the
// target key.
func (t *Transport) parseConfig(ctx context.Context, op string, cfg map[string]string, need parseNeeds) (*Config, error) {
	bad := func(key, msg, fix string) error {
		return host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:%s %s", key, msg), fix, nil)
	}
	c := &Config{ReplacementTimeout: defaultReplacementTimeout, QueueSeconds: defaultQueueSeconds}

	port := defaultPort
	if s := strings.TrimSpace(cfg[KeyPort]); s != "" {
		p, err := strconv.Atoi(s)
		if err != nil || p < 1 || p > 65535 {
			return nil, bad(KeyPort, fmt.Sprintf("is %q, not a TCP port", s), "give a number from 1 to 65535 (iSCSI uses 3260)")
		}
		port = p
	}

	target := strings.TrimSpace(cfg[KeyTarget])
	if target == "" {
		return nil, bad(KeyTarget, "is missing", "give the array's portal addresses, e.g. device-config:target=10.0.1.10,10.0.2.10")
	}
	seen := map[Portal]bool{}
	for _, raw := range strings.Split(target, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		p, err := t.parsePortal(ctx, raw, port)
		if err != nil {
			return nil, bad(KeyTarget, fmt.Sprintf("has %q: %v", raw, err), "give IPv4 or IPv6 addresses or resolvable host names, optionally with :port ([v6]:port)")
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		c.Portals = append(c.Portals, p)
		c.PortalText = append(c.PortalText, raw)
	}
	if len(c.Portals) == 0 {
		return nil, bad(KeyTarget, "names no portal", "give at least one portal address")
	}

	c.TargetIQN = strings.TrimSpace(cfg[KeyTargetIQN])
	switch {
	case c.TargetIQN == "" && need.iqn:
		return nil, bad(KeyTargetIQN, "is missing", "run xe sr-probe-ext with the target to list the IQNs, then give one (or '*')")
	case c.TargetIQN != "" && c.TargetIQN != wildcardIQN:
		if err := checkIQN(c.TargetIQN); err != nil {
			return nil, bad(KeyTargetIQN, err.Error(), "copy the IQN exactly as sr-probe lists it (iqn.YYYY-MM.reversed.domain:name), or '*'")
		}
	}

	if s := strings.TrimSpace(cfg[KeySCSIid]); s != "" {
		w := normaliseWWID(s)
		if !validWWID(w) {
			return nil, bad(KeySCSIid, fmt.Sprintf("is %q, not a SCSI WWID", s), "copy the SCSIid exactly as sr-probe lists it")
		}
		c.WWID = w
	} else if need.wwid {
		return nil, bad(KeySCSIid, "is missing", "run xe sr-probe-ext with target and targetIQN to list the LUNs, then give the SCSIid of one")
	}

	var err error
	if c.chap, err = t.parseCHAP(ctx, op, cfg, KeyChapUser, KeyChapPassword, need.secrets); err != nil {
		return nil, err
	}
	if c.mutual, err = t.parseCHAP(ctx, op, cfg, KeyIncomingUser, KeyIncomingPassword, need.secrets); err != nil {
		return nil, err
	}
	if c.mutual != nil && c.chap == nil {
		return nil, bad(KeyIncomingUser, "is set without chapuser", "mutual CHAP needs one-way CHAP too: also give chapuser and chappassword")
	}

	if s := strings.TrimSpace(cfg[KeyIface]); s != "" {
		if c.bindings, err = parseBindings(s, c); err != nil {
			return nil, bad(KeyIface, err.Error(), "give NIC names (eth1,eth2) or NIC=portal pairs (eth1=10.0.1.10)")
		}
	}

	if s := strings.TrimSpace(cfg[KeyReplacementTimeout]); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxReplacementTimeout {
			return nil, bad(KeyReplacementTimeout, fmt.Sprintf("is %q", s), fmt.Sprintf("give whole seconds from 1 to %d (default %d)", maxReplacementTimeout, defaultReplacementTimeout))
		}
		c.ReplacementTimeout = n
	}

	if s := strings.TrimSpace(cfg[KeyPathLossPolicy]); s != "" {
		if c.QueueSeconds, err = parsePolicy(s); err != nil {
			return nil, bad(KeyPathLossPolicy, fmt.Sprintf("is %q: %v", s, err), fmt.Sprintf("give 'queue' (%d s), 'queue:<seconds>' (1 to %d) or 'fail'", defaultQueueSeconds, maxQueueSeconds))
		}
	}
	return c, nil
}

// parsePortal reads one entry of the target key.
func (t *Transport) parsePortal(ctx context.Context, raw string, port int) (Portal, error) {
	hostPart := raw
	switch {
	case strings.HasPrefix(raw, "["):
		h, p, err := net.SplitHostPort(raw)
		if err != nil {
			h = strings.TrimSuffix(strings.TrimPrefix(raw, "["), "]")
		} else {
			if port, err = parsePort(p); err != nil {
				return Portal{}, err
			}
		}
		hostPart = h
	case strings.Count(raw, ":") == 1:
		h, p, err := net.SplitHostPort(raw)
		if err != nil {
			return Portal{}, err
		}
		if port, err = parsePort(p); err != nil {
			return Portal{}, err
		}
		hostPart = h
	}
	if a, err := netip.ParseAddr(hostPart); err == nil {
		if a.Zone() != "" {
			return Portal{}, fmt.Errorf("zoned IPv6 addresses are not supported")
		}
		return Portal{Addr: a.Unmap().String(), Port: port}, nil
	}
	if strings.ContainsAny(hostPart, ": /") {
		return Portal{}, fmt.Errorf("not an address")
	}
	addrs, err := t.lookup(ctx, hostPart)
	if err != nil {
		return Portal{}, fmt.Errorf("cannot resolve %s: %v", hostPart, err)
	}
	// Prefer IPv4 so that the session address matches what the
	// resolver gives first on a typical storage network.
	sort.SliceStable(addrs, func(i, j int) bool { return strings.Contains(addrs[i], ".") && !strings.Contains(addrs[j], ".") })
	for _, s := range addrs {
		if a, err := netip.ParseAddr(s); err == nil {
			return Portal{Addr: a.Unmap().String(), Port: port}, nil
		}
	}
	return Portal{}, fmt.Errorf("%s resolves to no address", hostPart)
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q is not a TCP port", s)
	}
	return p, nil
}

// parseCHAP reads a user and its password, which xapi hands over as
// <key>_secret (a secret uuid); a plain password is accepted for the CLI.
func (t *Transport) parseCHAP(ctx context.Context, op string, cfg map[string]string, userKey, passKey string, resolve bool) (*chap, error) {
	user := strings.TrimSpace(cfg[userKey])
	pass := cfg[passKey]
	secretUUID := strings.TrimSpace(cfg[passKey+secretSuffix])
	if user == "" {
		if pass != "" || secretUUID != "" {
			return nil, host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:%s is set without %s", passKey, userKey), "give both the CHAP user and its password, or neither", nil)
		}
		return nil, nil
	}
	if pass == "" && secretUUID == "" {
		return nil, host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:%s is set without %s", userKey, passKey), "give the CHAP password too", nil)
	}
	if err := checkCHAPValue(user); err != nil {
		return nil, host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:%s %v", userKey, err), chapFix, nil)
	}
	if pass == "" && resolve {
		if t.secrets == nil {
			return nil, host.NewError(host.KindInternal, op, "no XenAPI secret resolver to read "+passKey+secretSuffix, "this is a sanvol bug (the plugin did not give the transport a XenAPI client); report it with the plugin log", nil)
		}
		v, err := t.secrets.Secret(ctx, secretUUID)
		if err != nil {
			return nil, transport.SecretError(op, passKey+secretSuffix, secretUUID, err)
		}
		pass = v
	}
	if pass != "" {
		// The message never quotes the value: it is a secret.
		if err := checkCHAPValue(pass); err != nil {
			return nil, host.NewError(host.KindInvalid, op, fmt.Sprintf("device-config:%s (or the secret %s%s names) %v", passKey, passKey, secretSuffix, err), chapFix, nil)
		}
	}
	return &chap{user: user, password: pass}, nil
}

// chapFix is the fix of every refused CHAP user name or secret.
const chapFix = "give CHAP names and secrets of 1 to 255 bytes of printable characters, without leading or trailing blanks (the array's CHAP settings must match)"

func parseBindings(s string, c *Config) ([]binding, error) {
	var out []binding
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		nic, portal, _ := strings.Cut(e, "=")
		nic = strings.TrimSpace(nic)
		portal = strings.TrimSpace(portal)
		if !validNIC(nic) {
			return nil, fmt.Errorf("has %q, not a NIC name", nic)
		}
		if portal != "" && portalIndex(c, portal) < 0 {
			return nil, fmt.Errorf("binds %s to %q, which is not in device-config:target", nic, portal)
		}
		out = append(out, binding{nic: nic, portal: portal})
	}
	return out, nil
}

// portalIndex finds a portal by the text the admin wrote or by its address.
func portalIndex(c *Config, s string) int {
	for i, p := range c.Portals {
		if c.PortalText[i] == s || p.Addr == s || p.String() == s {
			return i
		}
	}
	return -1
}

func parsePolicy(s string) (int, error) {
	switch {
	case s == "fail":
		return 0, nil
	case s == "queue":
		return defaultQueueSeconds, nil
	case strings.HasPrefix(s, "queue:"):
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(s, "queue:"), "s"))
		if err != nil || n < 1 || n > maxQueueSeconds {
			return 0, fmt.Errorf("the queue time must be whole seconds from 1 to %d", maxQueueSeconds)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("unknown policy (queueing for ever is not offered: it hangs every process that touches the SR)")
	}
}

// policyString is the path-loss-policy in the form the admin writes it.
func policyString(queueSeconds int) string {
	if queueSeconds == 0 {
		return "fail"
	}
	return fmt.Sprintf("queue:%d", queueSeconds)
}

// ifacesFor lists the iface records that carry a portal: the NICs bound to
// it or to every portal, or "default" when none is.
func (c *Config) ifacesFor(i int) []string {
	var out []string
	for _, nic := range c.PortalNICs(i) {
		out = append(out, ifaceName(nic))
	}
	if len(out) == 0 {
		out = []string{defaultIface}
	}
	return out
}

// NICs lists the distinct NICs device-config:iface binds paths to.
func (c *Config) NICs() []string {
	var out []string
	seen := map[string]bool{}
	for _, b := range c.bindings {
		if !seen[b.nic] {
			seen[b.nic] = true
			out = append(out, b.nic)
		}
	}
	return out
}

// PortalNICs lists the NICs device-config:iface binds portal i to; none
// means the kernel routes it.
func (c *Config) PortalNICs(i int) []string {
	var out []string
	for _, b := range c.bindings {
		if b.portal == "" || portalIndex(c, b.portal) == i {
			out = append(out, b.nic)
		}
	}
	return out
}

// normaliseWWID turns a LUN identity into the form multipath names the map
// with (scsi_id -g -u): "naa.6001405…" from sysfs becomes "36001405…",
// "eui.…" becomes "2…", "t10.…" becomes "1…" with blanks as underscores.
func normaliseWWID(s string) string {
	s = strings.TrimSpace(s)
	lower := strings.ToLower(s)
	switch {
	case strings.HasPrefix(lower, "naa."):
		return "3" + lower[4:]
	case strings.HasPrefix(lower, "eui."):
		return "2" + lower[4:]
	case strings.HasPrefix(lower, "t10."):
		return "1" + strings.Join(strings.Fields(s[4:]), "_")
	case isHex(s) && (s[0] == '3' || s[0] == '2'):
		return lower
	}
	return s
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return s != ""
}
