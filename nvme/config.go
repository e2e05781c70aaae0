package nvme

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/transport"
)

// Device-config keys. The dhchap keys end in "password" on purpose: xapi
// then moves their values into XenAPI secrets and hands us
// "<key>_secret" = uuid, so the key never sits in clear text in the PBD.
const (
	KeyTarget         = "target"
	KeyPort           = "port"
	KeyDiscoveryPort  = "discovery-port"
	KeyNQN            = "nqn"
	KeyNamespace      = "namespace"
	KeyHostNQN        = "hostnqn"
	KeyHostID         = "hostid"
	KeyHostIface      = "host-iface"
	KeyCtrlLossTmo    = "ctrl-loss-tmo"
	KeyReconnectDelay = "reconnect-delay"
	KeyKeepAliveTmo   = "keep-alive-tmo"
	KeyNrIOQueues     = "nr-io-queues"
	KeyIOPolicy       = "iopolicy"
	KeyDHCHAP         = "dhchap-password"
	KeyDHCHAPCtrl     = "dhchap-ctrl-password"
	secretSuffix      = "_secret"
)

// Defaults follow the seed guide and ceph-csi: 1800 s of ctrl-loss-tmo
// rides out a controller failover or a switch reboot, while -1 (Dell,
// Trident) would queue I/O for ever and hang dom0 when storage is gone.
const (
	DefaultPort           = 4420
	DefaultCtrlLossTmo    = 1800
	DefaultReconnectDelay = 10
	DefaultIOPolicy       = "round-robin"
)

var ioPolicies = []string{"numa", "round-robin", "queue-depth"}

// Portal is one NVMe/TCP transport address of the subsystem.
type Portal struct {
	Addr  netip.Addr
	Port  int
	Iface string // host-iface binding; "" = none
	// IfaceExplicit is true when the admin named the interface; a derived
	// one is only a default and an existing unbound path also satisfies it.
	IfaceExplicit bool
}

// TrAddr is the traddr as nvme-cli and sysfs spell it.
func (p Portal) TrAddr() string { return p.Addr.String() }

// String is addr:port, with IPv6 in brackets, as errors and health name it.
func (p Portal) String() string {
	return netip.AddrPortFrom(p.Addr, uint16(p.Port)).String()
}

// Config is a validated device-config.
type Config struct {
	Portals        []Portal
	DiscoveryPort  int // 0 = the portal's own port
	NQN            string
	Namespace      NamespaceID // zero value = not given
	HostNQN        string      // "" = the host default (/etc/nvme/hostnqn)
	HostID         string
	CtrlLossTmo    int
	ReconnectDelay int
	KeepAliveTmo   int // 0 = kernel default
	NrIOQueues     int // 0 = kernel default
	IOPolicy       string
	// Secrets, resolved. Never logged, never in an error.
	DHCHAP     string
	DHCHAPCtrl string
}

// Auth reports whether DH-HMAC-CHAP is configured.
func (c Config) Auth() bool { return c.DHCHAP != "" }

const opValidate = "nvmetcp: device-config"

func invalid(msg, fix string) error {
	return host.NewError(host.KindInvalid, opValidate, msg, fix, nil)
}

// parseOpts says what a caller needs from the device-config.
type parseOpts struct {
	// needNQN is false for probe, where the subsystem is what we look for.
	needNQN bool
	// secrets resolves the dhchap keys; nil skips them (detach and health
	// must work even when the XenAPI secret is gone).
	secrets host.SecretResolver
}

// parseConfig validates the device-config. The plain dhchap keys are
// accepted too, because `sanvol probe` and the lab call the transport
// without xapi's rewriting.
func parseConfig(ctx context.Context, cfg map[string]string, o parseOpts) (Config, error) {
	c := Config{
		CtrlLossTmo:    DefaultCtrlLossTmo,
		ReconnectDelay: DefaultReconnectDelay,
		IOPolicy:       DefaultIOPolicy,
	}
	port := DefaultPort
	var err error
	if v, ok := cfg[KeyPort]; ok && v != "" {
		if port, err = parsePort(v); err != nil {
			return c, invalid(fmt.Sprintf("%s=%q is not a TCP port", KeyPort, v), "give a number from 1 to 65535, e.g. port=4420")
		}
	}
	if v := cfg[KeyDiscoveryPort]; v != "" {
		if c.DiscoveryPort, err = parsePort(v); err != nil {
			return c, invalid(fmt.Sprintf("%s=%q is not a TCP port", KeyDiscoveryPort, v), "give the discovery service port, usually 8009 or 4420")
		}
	}
	if c.Portals, err = parsePortals(cfg[KeyTarget], port); err != nil {
		return c, err
	}
	if err := applyIfaces(c.Portals, cfg[KeyHostIface]); err != nil {
		return c, err
	}
	c.NQN = strings.TrimSpace(cfg[KeyNQN])
	switch {
	case c.NQN == "" && o.needNQN:
		return c, invalid("nqn is missing", "give the subsystem NQN, device-config:nqn=nqn.…; `xe sr-probe-ext type=nvmetcp device-config:target=<portal>` lists the subsystems a portal offers")
	case c.NQN != "":
		if err := checkNQN(KeyNQN, c.NQN); err != nil {
			return c, err
		}
	}
	if v := strings.TrimSpace(cfg[KeyNamespace]); v != "" {
		if c.Namespace, err = ParseNamespaceID(v); err != nil {
			return c, err
		}
	}
	c.HostNQN = strings.TrimSpace(cfg[KeyHostNQN])
	if c.HostNQN != "" {
		if err := checkNQN(KeyHostNQN, c.HostNQN); err != nil {
			return c, err
		}
	}
	c.HostID = strings.ToLower(strings.TrimSpace(cfg[KeyHostID]))
	if c.HostID != "" && c.HostNQN == "" {
		return c, invalid("hostid is set without hostnqn", "a host ID pairs with one host NQN: give both, or neither to use /etc/nvme/hostnqn and /etc/nvme/hostid")
	}
	if c.HostID != "" && !isUUID(c.HostID) {
		return c, invalid(fmt.Sprintf("hostid=%q is not a UUID", c.HostID), "give a UUID such as 4c4c4544-0000-1000-8000-000000000000, or leave hostid out to use /etc/nvme/hostid")
	}
	ints := []struct {
		key string
		dst *int
		min int
		fix string
	}{
		{KeyCtrlLossTmo, &c.CtrlLossTmo, -1, "give seconds (default 1800); -1 waits for ever and can hang dom0 when the storage is gone"},
		{KeyReconnectDelay, &c.ReconnectDelay, 1, "give seconds between reconnect attempts (default 10)"},
		{KeyKeepAliveTmo, &c.KeepAliveTmo, 1, "give seconds (the kernel default is 5 for I/O controllers)"},
		{KeyNrIOQueues, &c.NrIOQueues, 1, "give a number of I/O queues, at most the number of CPUs"},
	}
	for _, f := range ints {
		v, ok := cfg[f.key]
		if !ok || v == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < f.min {
			return c, invalid(fmt.Sprintf("%s=%q is not a valid number (minimum %d)", f.key, v, f.min), f.fix)
		}
		*f.dst = n
	}
	if v := strings.TrimSpace(cfg[KeyIOPolicy]); v != "" {
		if !contains(ioPolicies, v) {
			return c, invalid(fmt.Sprintf("iopolicy=%q is unknown", v), "use round-robin (default), numa, or queue-depth (Linux 6.11 and later)")
		}
		c.IOPolicy = v
	}
	if o.secrets == nil {
		return c, nil
	}
	if c.DHCHAP, err = secretValue(ctx, cfg, KeyDHCHAP, o.secrets); err != nil {
		return c, err
	}
	if c.DHCHAPCtrl, err = secretValue(ctx, cfg, KeyDHCHAPCtrl, o.secrets); err != nil {
		return c, err
	}
	if c.DHCHAPCtrl != "" && c.DHCHAP == "" {
		return c, invalid("dhchap-ctrl-password is set without dhchap-password",
			"bidirectional DH-HMAC-CHAP needs the host key too: set dhchap-password as well")
	}
	return c, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return n, nil
}

// parsePortals reads "addr", "addr:port", "[v6]:port", "[v6]" or a bare
// IPv6 address, comma-separated. Names are refused: the kernel wants a
// numeric traddr and sysfs reports it, and we match paths by it.
func parsePortals(s string, defPort int) ([]Portal, error) {
	const fix = "give portal addresses as target=10.0.0.1,10.0.1.1 or target=10.0.0.1:4420,[fd00::1]:4420"
	if strings.TrimSpace(s) == "" {
		return nil, invalid("target is missing", fix)
	}
	var out []Portal
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p := Portal{Port: defPort}
		if ap, err := netip.ParseAddrPort(f); err == nil {
			p.Addr, p.Port = ap.Addr(), int(ap.Port())
			if p.Port == 0 {
				return nil, invalid(fmt.Sprintf("target %q has port 0", f), fix)
			}
		} else if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(f, "["), "]")); err == nil {
			p.Addr = a
		} else {
			return nil, invalid(fmt.Sprintf("target %q is not an IPv4 or IPv6 address (host names are not accepted)", f), fix)
		}
		p.Addr = p.Addr.Unmap()
		if p.Addr.IsUnspecified() || p.Addr.IsMulticast() {
			return nil, invalid(fmt.Sprintf("target %q is not a unicast address", f), fix)
		}
		if seen[p.String()] {
			return nil, invalid(fmt.Sprintf("target lists portal %s twice", p), fix)
		}
		seen[p.String()] = true
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, invalid("target is empty", fix)
	}
	return out, nil
}

var ifaceRe = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)

// applyIfaces reads host-iface: one interface for every portal, or one
// per portal in the order of target.
func applyIfaces(ps []Portal, s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	names := strings.Split(s, ",")
	for i := range names {
		names[i] = strings.TrimSpace(names[i])
		if !ifaceRe.MatchString(names[i]) {
			return invalid(fmt.Sprintf("host-iface %q is not a network interface name", names[i]), "give interface names such as eth1 or xenbr1")
		}
	}
	switch len(names) {
	case 1:
		for i := range ps {
			ps[i].Iface, ps[i].IfaceExplicit = names[0], true
		}
	case len(ps):
		for i := range ps {
			ps[i].Iface, ps[i].IfaceExplicit = names[i], true
		}
	default:
		return invalid(fmt.Sprintf("host-iface names %d interfaces for %d portals", len(names), len(ps)),
			"give one interface for all portals, or one per portal in the order of target")
	}
	return nil
}

// checkNQN applies the NVMe base spec's rules: "nqn." prefix, at most
// 223 bytes, printable. ',' and '=' are refused too: the NQN travels in
// the comma-separated "key=value" options string of /dev/nvme-fabrics,
// where "nqn=x,hostnqn=y" would become a second option.
func checkNQN(key, v string) error {
	fix := "an NQN looks like nqn.2014-08.org.example:subsystem1 (at most 223 characters, no blanks, ',' or '=')"
	if !validNQN(v) {
		return invalid(fmt.Sprintf("%s=%q is not a valid NQN", key, v), fix)
	}
	return nil
}

func validNQN(v string) bool {
	if !strings.HasPrefix(v, "nqn.") || len(v) > 223 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if b := v[i]; b <= ' ' || b >= 0x7f || b == ',' || b == '=' {
			return false
		}
	}
	return true
}

// secretValue resolves "<key>_secret" through XenAPI, or takes the plain
// key when a caller other than xapi gave it.
func secretValue(ctx context.Context, cfg map[string]string, key string, res host.SecretResolver) (string, error) {
	v := strings.TrimSpace(cfg[key])
	if uuid := strings.TrimSpace(cfg[key+secretSuffix]); uuid != "" {
		s, err := res.Secret(ctx, uuid)
		if err != nil {
			return "", transport.SecretError(opValidate, key+secretSuffix, uuid, err)
		}
		v = strings.TrimSpace(s)
	}
	if v == "" {
		return "", nil
	}
	if !dhchapRe.MatchString(v) {
		// Never echo the value: it is a key.
		return "", invalid(key+" is not a DH-HMAC-CHAP key in the DHHC-1:<hash>:<base64>: format",
			"generate one with `nvme gen-dhchap-key --nqn <hostnqn>` and give the same key to the target")
	}
	return v, nil
}

var dhchapRe = regexp.MustCompile(`^DHHC-1:0[0-3]:[A-Za-z0-9+/]+={0,2}:$`)

func isUUID(s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	_, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	return err == nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// NamespaceID is how the admin named the namespace: an NSID, or one of
// its global identifiers. The kernel's wwid attribute ("uuid.<uuid>",
// "eui.<nguid>", "eui.<eui64>") is the canonical stable form we store.
type NamespaceID struct {
	NSID uint32
	// Hex is the identifier as lowercase hex digits without separators:
	// 32 digits for a UUID or NGUID, 16 for an EUI-64.
	Hex string
	// Kind says which identifier Hex is: "uuid", "nguid", "eui64", or
	// "uuid|nguid" when a dashed 32-digit value could be either.
	Kind string
}

// StableID is the identifier as the kernel's wwid attribute spells it
// ("uuid.<uuid>", "eui.<hex>"), the form SR.create records, or "" for an
// NSID, which is not the same on every target.
func (n NamespaceID) StableID() string {
	if n.Hex == "" || n.Kind == "uuid|nguid" {
		return ""
	}
	return n.String()
}

// IsZero reports whether no namespace was given.
func (n NamespaceID) IsZero() bool { return n.NSID == 0 && n.Hex == "" }

func (n NamespaceID) String() string {
	switch {
	case n.NSID != 0:
		return fmt.Sprintf("nsid %d", n.NSID)
	case n.Kind == "uuid":
		return "uuid." + dashed(n.Hex)
	case n.Kind == "eui64", n.Kind == "nguid":
		return "eui." + n.Hex
	default:
		return dashed(n.Hex)
	}
}

// ParseNamespaceID accepts a decimal NSID, a UUID, an NGUID (32 hex
// digits, dashes allowed), an EUI-64 (16 hex digits, separators allowed)
// and the kernel's wwid forms "uuid.<uuid>" and "eui.<hex>".
func ParseNamespaceID(s string) (NamespaceID, error) {
	fix := "give an NSID (1, 2…), a UUID, an NGUID (32 hex digits) or an EUI-64 (16 hex digits); `xe sr-probe-ext` lists them"
	low := strings.ToLower(strings.TrimSpace(s))
	if n, err := strconv.ParseUint(low, 10, 32); err == nil {
		if n == 0 || n == 0xffffffff {
			return NamespaceID{}, invalid(fmt.Sprintf("namespace=%q is not a valid NSID", s), fix)
		}
		return NamespaceID{NSID: uint32(n)}, nil
	}
	kind := ""
	switch {
	case strings.HasPrefix(low, "uuid."):
		kind, low = "uuid", low[5:]
	case strings.HasPrefix(low, "eui."):
		kind, low = "eui", low[4:]
	case strings.HasPrefix(low, "nguid."):
		kind, low = "nguid", low[6:]
	}
	h := strings.Map(func(r rune) rune {
		if r == '-' || r == ':' || r == ' ' {
			return -1
		}
		return r
	}, low)
	if _, err := hex.DecodeString(h); err != nil || (len(h) != 32 && len(h) != 16) {
		return NamespaceID{}, invalid(fmt.Sprintf("namespace=%q is neither an NSID nor a UUID, NGUID or EUI-64", s), fix)
	}
	if strings.Trim(h, "0") == "" {
		return NamespaceID{}, invalid(fmt.Sprintf("namespace=%q is all zeros, which the NVMe spec reserves for \"not reported\"", s), fix)
	}
	switch {
	case len(h) == 16 && (kind == "" || kind == "eui"):
		kind = "eui64"
	case len(h) == 32 && kind == "eui":
		kind = "nguid"
	case len(h) == 32 && kind == "":
		if isUUID(low) {
			kind = "uuid|nguid"
		} else {
			kind = "nguid"
		}
	case len(h) == 32 && (kind == "uuid" || kind == "nguid"):
	default:
		return NamespaceID{}, invalid(fmt.Sprintf("namespace=%q has the wrong length for its prefix", s), fix)
	}
	return NamespaceID{Hex: h, Kind: kind}, nil
}

func dashed(h string) string {
	if len(h) != 32 {
		return h
	}
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
