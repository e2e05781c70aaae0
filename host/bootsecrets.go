package host

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"
)

// BootSecretDir keeps, root-only, the values of the XenAPI secrets that the
// SRs holding static VDIs (the HA statefile and redo log) need at boot.
// attach-static-vdis runs before xapi (scripts/attach-static-vdis.service
// in xen-api: Before=xapi.service), so no secret can be read through
// XenAPI then, and static-vdis hands the plugin the PBD's device-config as
// it stored it: with "<key>_secret" uuids, never the password
// (python3/bin/static-vdis, add). SMAPIv1 iSCSI solves the same problem
// by writing the clear CHAP password into the static VDI's config file
// (xcp-ng/sm LVHDoISCSISR.py, LVHDoISCSIVDI.generate_config); sanvol
// keeps it out of the world-readable static-vdis tree instead, in this
// directory (0700), one 0600 file per secret uuid.
const BootSecretDir = "/var/lib/sanvol/boot-secrets"

// StaticVDIsDir is where static-vdis keeps one directory per static VDI,
// each with the "device-config" (JSON) it attaches the SR with at boot.
const StaticVDIsDir = "/etc/xensource/static-vdis"

var secretUUIDRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// BootSecrets resolves secrets through XenAPI and falls back, when xapi is
// not running, to the copy kept for boot. Keep is set for the calls of
// static-vdis: a secret it resolves with xapi up (at `static-vdis add`,
// i.e. xe pool-ha-enable) is kept for the boots to come; copies that no
// static VDI's device-config names any more are removed then.
type BootSecrets struct {
	Root   Root
	XenAPI SecretResolver
	Keep   bool
}

// Secret returns the value of the secret named by uuid.
func (b BootSecrets) Secret(ctx context.Context, uuid string) (string, error) {
	op := "resolve secret " + uuid
	if !secretUUIDRe.MatchString(uuid) {
		return "", NewError(KindInvalid, op, "not a secret uuid",
			"the PBD's device-config names a secret by a malformed uuid; re-create the PBD with the password (xe pbd-create … device-config:…password=…)", nil)
	}
	v, err := b.XenAPI.Secret(ctx, uuid)
	if err == nil {
		if b.Keep {
			if err := b.keep(uuid, v); err != nil {
				return "", NewError(KindInternal, op, "cannot keep a copy of the secret for boot in "+BootSecretDir,
					"check that /var/lib is writable by root; without the copy the SR cannot be attached at boot before xapi runs", err)
			}
		}
		return v, nil
	}
	if !errors.Is(err, ErrUnreachable) {
		return "", err
	}
	kept, rerr := b.Root.ReadFile(path.Join(BootSecretDir, strings.ToLower(uuid)))
	if rerr != nil {
		return "", NewError(KindUnreachable, op, "xapi is not running and no copy of this secret was kept for boot",
			"the copy is made when static-vdis attaches the SR with xapi running (xe pool-ha-enable); start xapi (systemctl start xapi), or disable and re-enable HA", err)
	}
	return string(kept), nil
}

// keep writes the copy and prunes the copies that no static VDI needs.
func (b BootSecrets) keep(uuid, value string) error {
	uuid = strings.ToLower(uuid)
	if err := b.Root.MkdirAll(BootSecretDir, 0o700); err != nil {
		return err
	}
	// MkdirAll leaves an existing directory's mode alone; the directory
	// must be root-only whatever made it.
	if err := chmod(b.Root, BootSecretDir, 0o700); err != nil {
		return err
	}
	p := path.Join(BootSecretDir, uuid)
	if cur, err := b.Root.ReadFile(p); err != nil || string(cur) != value {
		if err := b.Root.WriteFileAtomic(p, []byte(value), 0o600); err != nil {
			return err
		}
	}
	used := StaticVDISecrets(b.Root)
	entries, err := b.Root.ReadDir(BootSecretDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if n := e.Name(); n != uuid && !used[n] {
			_ = b.Root.Remove(path.Join(BootSecretDir, n))
		}
	}
	return nil
}

// StaticVDISecrets lists the secret uuids that the device-configs of the
// static VDIs name (lower case).
func StaticVDISecrets(root Root) map[string]bool {
	used := map[string]bool{}
	dirs, err := root.ReadDir(StaticVDIsDir)
	if err != nil {
		return used
	}
	for _, d := range dirs {
		raw, err := root.ReadFile(path.Join(StaticVDIsDir, d.Name(), "device-config"))
		if err != nil {
			continue
		}
		var cfg map[string]string
		if json.Unmarshal(raw, &cfg) != nil {
			continue
		}
		for k, v := range cfg {
			if strings.HasSuffix(k, "password_secret") {
				used[strings.ToLower(v)] = true
			}
		}
	}
	return used
}

func chmod(root Root, p string, mode fs.FileMode) error {
	st, err := root.Stat(p)
	if err != nil {
		return err
	}
	if st.Mode().Perm() == mode {
		return nil
	}
	return os.Chmod(root.Path(p), mode)
}
