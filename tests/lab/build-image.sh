#!/bin/bash
# build-image.sh OUT_DIR KERNEL MIRROR [DOM0 DOM0_TOOLS_DIR]
#
# Builds the lab guest (Debian 12 minbase) into OUT_DIR: vmlinuz, initrd.img,
# rootfs.img and versions.txt. Called by run.sh, which caches OUT_DIR by a
# hash of this file, guest/lab-init, KERNEL, DOM0 and the DOM0 tools' files;
# the mirror is not part of the hash because any Debian mirror serves the
# same packages.
#
# DOM0=xcpng8 also builds XCP-ng 8.x dom0's storage tools (lvm2 2.02.180,
# open-iscsi 2.0.874, multipath-tools 0.4.9) from DOM0_TOOLS_DIR (the
# project's shared/dom0-tools: sources, patches and build.sh) inside the
# guest's root and installs them under /opt/xcpng8. Debian's packages stay;
# guest/init.sh puts the dom0 tools ahead of them at boot (wrappers in
# /usr/local/sbin), so which tools a run uses can change without a rebuild.
set -euo pipefail

out=$1 kernel=$2 mirror=$3 dom0=${4:-} dom0_tools=${5:-}
here=$(cd "$(dirname "$0")" && pwd)

# Only what the scenarios use: the initiators, the tools that talk to the
# kernel targets through configfs, and LVM. fio and targetcli are left out on
# purpose (ceph/python dependencies, lab-notes).
packages=kmod,udev,initramfs-tools,nvme-cli,open-iscsi,multipath-tools,lvm2,util-linux,iproute2,iputils-ping,e2fsprogs,procps,psmisc,jq

root=$out/root
mkdir -p "$root"
cleanup() {
	for m in dev/pts dev proc sys; do
		mountpoint -q "$root/$m" && umount -l "$root/$m"
	done
	return 0
}
trap cleanup EXIT

echo "lab: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1 ||
	{ tail -30 "$out/debootstrap.log"; exit 1; }

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

{
	echo "deb $mirror bookworm main"
	[ "$kernel" = backports ] && echo "deb $mirror bookworm-backports main"
} >"$root/etc/apt/sources.list"

# A tiny initrd: the root disk is virtio and ext4, nothing else is needed
# before /sbin/lab-init runs.
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/lab"
printf '%s\n' virtio_pci virtio_blk ext4 >>"$root/etc/initramfs-tools/modules"

target=()
[ "$kernel" = backports ] && target=(-t bookworm-backports)
echo "lab: installing the $kernel kernel"
chroot "$root" /bin/sh -c "DEBIAN_FRONTEND=noninteractive apt-get -q update && \
	DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install ${target[*]} linux-image-amd64" \
	>"$out/kernel.log" 2>&1 || { tail -30 "$out/kernel.log"; exit 1; }

if [ "$dom0" = xcpng8 ]; then
	# Built in the guest's own root, so they link against the guest's
	# libraries; the build packages are purged again afterwards.
	echo "lab: building XCP-ng 8.x dom0's lvm2, open-iscsi and multipath-tools"
	deps="build-essential pkg-config libaio-dev libblkid-dev libudev-dev libreadline-dev libdevmapper-dev \
		libsystemd-dev libjson-c-dev libmount-dev libssl-dev libisns-dev patch"
	chroot "$root" dpkg-query -W -f '${Package}\n' | sort >"$out/pkgs.before"
	chroot "$root" /bin/sh -c "DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install $deps" \
		>"$out/dom0-build.log" 2>&1 || { tail -30 "$out/dom0-build.log"; exit 1; }
	rm -rf "$root/tmp/dom0-tools" "$root/tmp/dom0-out"
	cp -r "$dom0_tools" "$root/tmp/dom0-tools"
	mkdir -p "$root/opt/xcpng8"
	built=()
	for t in lvm2 open-iscsi multipath; do
		# lvm2 is the point of the mode; the other two are used when they
		# build (init.sh falls back to Debian's for a missing one).
		if chroot "$root" /bin/bash /tmp/dom0-tools/build.sh /tmp/dom0-out "$t" >>"$out/dom0-build.log" 2>&1; then
			cp -a "$root/tmp/dom0-out/$t/opt/xcpng8/." "$root/opt/xcpng8/"
			built+=("$t")
		else
			[ "$t" = lvm2 ] && { tail -40 "$out/dom0-build.log"; exit 1; }
			echo "lab: $t did not build (see dom0-build.log); the guest keeps Debian's"
		fi
	done
	rm -rf "$root/tmp/dom0-tools" "$root/tmp/dom0-out"
	chroot "$root" dpkg-query -W -f '${Package}\n' | sort >"$out/pkgs.after"
	# shellcheck disable=SC2046
	chroot "$root" /bin/sh -c "DEBIAN_FRONTEND=noninteractive apt-get -q -y purge $(comm -13 "$out/pkgs.before" "$out/pkgs.after" | tr '\n' ' ')" \
		>>"$out/dom0-build.log" 2>&1 || { tail -30 "$out/dom0-build.log"; exit 1; }
	rm -f "$out/pkgs.before" "$out/pkgs.after"
	printf '%s\n' "${built[@]}" >"$root/opt/xcpng8/BUILT"
	echo xcpng8 >"$root/etc/sanvol-lab-dom0"
fi

# Packages create host identities at build time; every boot makes its own
# (lab-notes pitfall 2), so none may survive in the image.
rm -f "$root/etc/nvme/hostnqn" "$root/etc/nvme/hostid" "$root/etc/iscsi/initiatorname.iscsi"
install -m 0755 "$here/guest/lab-init" "$root/sbin/lab-init"
mkdir -p "$root/lab" "$root/srv/lab" "$root/etc/target"

kver=$(ls "$root/lib/modules" | sort -V | tail -1)
{
	echo "kernel $kver"
	chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' nvme-cli open-iscsi multipath-tools lvm2 udev
	if [ -f "$root/opt/xcpng8/BUILT" ]; then echo "xcpng8 (ahead of Debian's): $(tr '\n' ' ' <"$root/opt/xcpng8/BUILT")"; fi
} >"$out/versions.txt"
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"

cleanup
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/boot/"*
truncate -s 2G "$out/rootfs.img"
mkfs.ext4 -q -F -L labroot -d "$root" "$out/rootfs.img"
rm -rf "$root"
echo "lab: image ready: $(tr '\n' ' ' <"$out/versions.txt")"
