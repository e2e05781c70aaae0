package nvme

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// waitNamespace waits for the subsystem's namespace head named by
// c.Namespace (or its only namespace when none is named). Namespaces are
// scanned asynchronously after the connect, so it polls sysfs.
func (t *Transport) waitNamespace(ctx context.Context, c Config, op string) (Subsystem, Namespace, error) {
	var sub Subsystem
	var heads []Namespace
	var picked Namespace
	stableSince := time.Time{}
	lastCount := -1
	wctx, cancel := context.WithTimeout(ctx, t.to.Namespace)
	defer cancel()
	err := host.Poll(wctx, t.to.Poll, func(context.Context) (bool, error) {
		var found bool
		var err error
		sub, found, err = t.sys.subsystemByNQN(c.NQN)
		if err != nil {
			return false, host.NewError(host.KindInternal, op, "cannot read "+sysClassSubsys, "", err)
		}
		heads = heads[:0]
		if found {
			for _, h := range sub.Heads {
				heads = append(heads, t.sys.namespace(h))
			}
		}
		if !c.Namespace.IsZero() {
			for _, ns := range heads {
				if ns.Matches(c.Namespace) {
					picked = ns
					return true, nil
				}
			}
		} else if len(heads) > 0 {
			// No namespace named: wait until the scan settles, so that a
			// second namespace still being scanned makes it ambiguous.
			if len(heads) != lastCount {
				lastCount, stableSince = len(heads), time.Now()
			} else if time.Since(stableSince) >= 10*t.to.Poll {
				if len(heads) == 1 {
					picked = heads[0]
					return true, nil
				}
				return false, host.NewError(host.KindInvalid, op,
					fmt.Sprintf("subsystem %s has %d namespaces and device-config:namespace does not say which one (%s)", c.NQN, len(heads), describeHeads(heads)),
					"add device-config:namespace=<NSID, NGUID or UUID>", nil)
			}
		}
		return false, nil
	})
	var te *host.TimeoutError
	switch {
	case err == nil:
		return sub, picked, nil
	case !errors.As(err, &te):
		return sub, Namespace{}, err
	case ctx.Err() != nil:
		return sub, Namespace{}, host.NewError(host.KindTimeout, op, "gave up waiting for the namespace", "", ctx.Err())
	}
	want := "any namespace"
	if !c.Namespace.IsZero() {
		want = "namespace " + c.Namespace.String()
	}
	have := "none"
	if len(heads) > 0 {
		have = describeHeads(heads)
	}
	return sub, Namespace{}, host.NewError(host.KindNotFound, op,
		fmt.Sprintf("%s did not appear in subsystem %s within %s (it has: %s)", want, c.NQN, t.to.Namespace, have),
		"check that the target exports the namespace to this host and that device-config:namespace is right (nvme list-subsys; ls /sys/class/nvme-subsystem/*/)", nil)
}

func describeHeads(heads []Namespace) string {
	var parts []string
	for _, ns := range heads {
		id, _ := ns.StableID()
		parts = append(parts, fmt.Sprintf("%s nsid %d %s", ns.Name, ns.NSID, id))
	}
	return strings.Join(parts, ", ")
}

// setIOPolicy applies the iopolicy to the whole subsystem (the kernel
// has it per subsystem, so SRs on the same subsystem share it).
func (t *Transport) setIOPolicy(sub Subsystem, policy, op string) error {
	p := sysClassSubsys + "/" + sub.Name + "/iopolicy"
	cur := t.sys.attr(p)
	if cur == policy {
		return nil
	}
	if err := t.root.WriteFile(p, []byte(policy), 0o644); err != nil {
		fix := "use iopolicy=round-robin or numa"
		if policy == "queue-depth" {
			fix = "queue-depth needs Linux 6.11 or later; use iopolicy=round-robin"
		}
		return host.NewError(host.KindUnsupported, op, "kernel "+t.kernelRelease()+" refused iopolicy "+policy+" for "+sub.Name, fix, err)
	}
	if got := t.sys.attr(p); got != policy {
		return host.NewError(host.KindUnsupported, op, fmt.Sprintf("iopolicy of %s is %q after writing %q", sub.Name, got, policy), "check the kernel log", nil)
	}
	t.log.Info("iopolicy set", zapStr("subsystem", sub.Name), zapStr("iopolicy", policy))
	return nil
}

// byIDDir holds udev's persistent links; nvme-<wwid> names a namespace
// by the kernel's wwid attribute.
const byIDDir = "/dev/disk/by-id"

// devicePath returns the path handed to LVM and recorded by SR.attach:
// /dev/disk/by-id/nvme-<wwid> (nvme-uuid.<uuid> or nvme-eui.<nguid>),
// which names the namespace by its identity on every host, and never the
// head /dev/nvmeXnY, which names whatever namespace the kernel gives that
// number after a reconnect. udev makes the link (60-persistent-storage
// rules, systemd 230 and later; the lab's Debian 12 guest has it). Where
// it has not (an older udev, or a link left pointing at a head that is
// gone), sanvol makes the same link to the head it found by identity, so
// the path always exists and always leads to this namespace. The check
// runs at every attach and before every use of an attach record
// (ResolveDevice).
func (t *Transport) devicePath(ctx context.Context, op string, ns Namespace) (string, error) {
	if !strings.HasPrefix(ns.WWID, "uuid.") && !strings.HasPrefix(ns.WWID, "eui.") {
		return "", host.NewError(host.KindUnsupported, op,
			fmt.Sprintf("the kernel names namespace %d (/dev/%s) by %q, not by its UUID or NGUID, so it has no stable path", ns.NSID, ns.Name, ns.WWID),
			"give the namespace a UUID or NGUID on the target (Linux nvmet: namespaces/N/device_uuid or device_nguid)", nil)
	}
	head := "/dev/" + ns.Name
	link := byIDDir + "/nvme-" + ns.WWID
	check := func() bool {
		target, err := t.root.EvalSymlinks(link)
		return err == nil && target == head
	}
	if check() {
		return link, nil
	}
	// udev may still be handling the new disk's uevent.
	_, _ = t.run.Run(ctx, host.Cmd{Name: "udevadm", Args: []string{"settle", "--timeout=5"}, Timeout: 7 * time.Second})
	if check() {
		return link, nil
	}
	if err := t.root.Remove(link); err == nil {
		_ = t.root.MkdirAll(byIDDir, 0o755)
		err = t.root.Symlink("../../"+ns.Name, link)
		if err == nil && check() {
			t.log.Info("udev made no by-id link for the namespace; made it", zapStr("link", link), zapStr("device", head))
			return link, nil
		}
	}
	return "", host.NewError(host.KindInternal, op, fmt.Sprintf("cannot make %s point at %s", link, head),
		"check that /dev/disk/by-id is writable and that udev runs (udevadm settle; ls -l /dev/disk/by-id)", nil)
}

// ResolveDevice checks the device an attach record names before a call
// uses it, and returns the path to use: the by-id link of the namespace
// the configuration names, made to point at it (devicePath). A record of
// an older sanvol that holds a head name (/dev/nvmeXnY) is thereby
// migrated. When the namespace is not on this host (every path lost for
// longer than ctrl_loss_tmo), a by-id path is returned as recorded, for
// LVM to find nothing behind; a head name is refused, since the kernel
// may have given it to another namespace.
func (t *Transport) ResolveDevice(ctx context.Context, cfg map[string]string, recorded string) (string, error) {
	const op = "nvmetcp: check the SR's device"
	c, err := parseConfig(ctx, cfg, parseOpts{needNQN: true})
	if err != nil {
		return "", err
	}
	if !c.Namespace.IsZero() {
		if sub, found, err := t.sys.subsystemByNQN(c.NQN); err == nil && found {
			for _, h := range sub.Heads {
				if ns := t.sys.namespace(h); ns.Matches(c.Namespace) {
					return t.devicePath(ctx, op, ns)
				}
			}
		}
	}
	if strings.HasPrefix(recorded, byIDDir+"/") {
		return recorded, nil
	}
	return "", host.NewError(host.KindUnreachable, op,
		fmt.Sprintf("namespace %s of subsystem %s is not present on this host, and the attach record names the kernel device %s, which may now be another namespace", c.Namespace, c.NQN, recorded),
		"check the paths (nvme list-subsys) and the target; once the namespace is back, retry (sanvol then records its /dev/disk/by-id path)", nil)
}
