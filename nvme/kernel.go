package nvme

import (
	"context"
	"strings"

	"github.com/sanvol/sanvol/host"
)

const kernelFix = "boot a dom0 kernel 5.0 or newer built with CONFIG_NVME_TCP and CONFIG_NVME_MULTIPATH=y (5.14+ for host-iface; Linux 6.0+ with CONFIG_NVME_AUTH/CONFIG_NVME_HOST_AUTH for DH-HMAC-CHAP). XCP-ng 8.3's 4.19 dom0 kernel has no nvme-tcp"

func (t *Transport) kernelRelease() string { return host.KernelRelease(t.root) }

// checkKernel makes sure this kernel can be an NVMe/TCP host with native
// multipath. It loads nvme-tcp if needed; a module that is not there
// fails at once instead of letting `nvme connect` print a bare error.
func (t *Transport) checkKernel(ctx context.Context, op string) error {
	rel := t.kernelRelease()
	if !t.root.Exists(sysModNVMeTCP) {
		_, err := t.run.Run(ctx, host.Cmd{Name: "modprobe", Args: []string{"nvme-tcp"}, Timeout: t.to.Modprobe})
		if err != nil {
			return host.NewError(host.KindUnsupported, op,
				"kernel "+rel+" cannot load the NVMe/TCP host module nvme-tcp", kernelFix, err)
		}
	}
	if !t.root.Exists(devFabrics) {
		if _, err := t.run.Run(ctx, host.Cmd{Name: "modprobe", Args: []string{"nvme-fabrics"}, Timeout: t.to.Modprobe}); err != nil || !t.root.Exists(devFabrics) {
			return host.NewError(host.KindUnsupported, op, devFabrics+" is missing on kernel "+rel,
				"load nvme-fabrics (modprobe nvme-fabrics) and check that devtmpfs/udev create "+devFabrics+"; "+kernelFix, err)
		}
	}
	mp, err := t.root.ReadString(sysMultipathParam)
	switch {
	case err != nil:
		return host.NewError(host.KindUnsupported, op,
			"kernel "+rel+" has no native NVMe multipath ("+sysMultipathParam+" is missing: CONFIG_NVME_MULTIPATH is off)",
			"boot a kernel built with CONFIG_NVME_MULTIPATH=y", nil)
	case !MultipathOn(mp):
		return host.NewError(host.KindUnsupported, op,
			"native NVMe multipath is off (nvme_core multipath="+mp+"), so each path would be a separate disk",
			"echo 'options nvme_core multipath=Y' > /etc/modprobe.d/nvme-multipath.conf, rebuild the initrd (dracut -f) and reboot: the parameter cannot change while NVMe controllers exist", nil)
	}
	return nil
}

// fabricsOptions lists the connect options the kernel accepts, which
// reading /dev/nvme-fabrics prints since Linux 5.17 (libnvme uses it the
// same way). nil means the kernel does not say.
func (t *Transport) fabricsOptions() map[string]bool {
	s, err := t.root.ReadString(devFabrics)
	if err != nil || s == "" {
		return nil
	}
	out := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		k, _, _ := strings.Cut(strings.TrimSpace(f), "=")
		out[k] = true
	}
	return out
}

// authSupport says whether the kernel can do NVMe in-band authentication,
// from its build configuration: CONFIG_NVME_HOST_AUTH since 6.7,
// CONFIG_NVME_AUTH before. known=false when the config is not readable;
// the per-controller dhchap_secret attribute then decides after connect.
func (t *Transport) authSupport() (ok, known bool) {
	b, err := t.root.ReadFile("/boot/config-" + t.kernelRelease())
	if err != nil {
		return false, false
	}
	cfg := string(b)
	if strings.Contains(cfg, "CONFIG_NVME_HOST_AUTH") {
		return strings.Contains(cfg, "CONFIG_NVME_HOST_AUTH=y"), true
	}
	return strings.Contains(cfg, "CONFIG_NVME_AUTH=y") || strings.Contains(cfg, "CONFIG_NVME_AUTH=m"), true
}

func (t *Transport) authRefusal(op, what string) error {
	return host.NewError(host.KindUnsupported, op,
		"DH-HMAC-CHAP is configured but kernel "+t.kernelRelease()+" cannot authenticate NVMe connections (no CONFIG_NVME_AUTH/CONFIG_NVME_HOST_AUTH); "+what+
			". sanvol refuses rather than connect without authentication",
		"boot a kernel with NVMe in-band authentication (Linux 6.0+ built with CONFIG_NVME_HOST_AUTH, e.g. Debian bookworm-backports 6.12), or remove dhchap-password from the device-config if the target does not require it", nil)
}
