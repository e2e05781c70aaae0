#!/bin/bash
# build-image.sh OUT_DIR KERNEL MIRROR [BASE_DIR]
#
# Builds the lab guest (Debian 12 minbase) into OUT_DIR: vmlinuz, initrd.img,
# rootfs.img and versions.txt. Called by run.sh, which caches OUT_DIR by a
# hash of this file, guest/lab-init and KERNEL; the mirror is not part of the
# hash because any Debian mirror serves the same packages.
# With BASE_DIR (the bookworm image, for KERNEL backports) the root file
# system is a copy of BASE_DIR's with the kernel swapped: the same packages
# without a second debootstrap.
set -euo pipefail

out=$1 kernel=$2 mirror=$3 base=${4:-}
here=$(cd "$(dirname "$0")" && pwd)

# Only what the scenarios use: the initiators, the tools that talk to the
# kernel targets through configfs, and LVM. fio and targetcli are left out on
# purpose (ceph/python dependencies).
packages=kmod,udev,initramfs-tools,nvme-cli,open-iscsi,multipath-tools,lvm2,util-linux,iproute2,iputils-ping,e2fsprogs,procps,psmisc,jq

root=$out/root
mkdir -p "$root"
cleanup() {
	for m in dev/pts dev proc sys; do
		mountpoint -q "$root/$m" && umount -l "$root/$m"
	done
	return 0
}
trap 'cleanup; if [ -n "$base" ] && mountpoint -q "$root"; then umount -l "$root"; fi' EXIT

if [ -n "$base" ]; then
	echo "lab: the $kernel image from $base"
	cp --sparse=always "$base/rootfs.img" "$out/rootfs.img"
	# Room for a second kernel's modules while the first is purged.
	truncate -s 3G "$out/rootfs.img"
	e2fsck -fy "$out/rootfs.img" >/dev/null 2>&1 || true
	resize2fs "$out/rootfs.img" >/dev/null 2>&1
	mount -o loop "$out/rootfs.img" "$root" || { echo "lab: cannot loop-mount the guest image (need root and /dev/loop*)"; exit 1; }
else
	echo "lab: debootstrap bookworm from $mirror"
	debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1 ||
		{ tail -30 "$out/debootstrap.log"; exit 1; }
fi

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

if [ -n "$base" ]; then
	# The base's kernel goes: the guest boots the new one, and the image
	# keeps one set of modules.
	old=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package}\n' 'linux-image-[0-9]*' |
		grep -v "$(ls "$root/lib/modules" | sort -V | tail -1)" || true)
	[ -z "$old" ] || chroot "$root" /bin/sh -c "DEBIAN_FRONTEND=noninteractive apt-get -q -y purge $(echo $old)" \
		>>"$out/kernel.log" 2>&1 || { tail -30 "$out/kernel.log"; exit 1; }
fi

# Packages create host identities at build time; every boot makes its own
# (docs/lab-pitfalls.md §2), so none may survive in the image.
rm -f "$root/etc/nvme/hostnqn" "$root/etc/nvme/hostid" "$root/etc/iscsi/initiatorname.iscsi"
install -m 0755 "$here/guest/lab-init" "$root/sbin/lab-init"
mkdir -p "$root/lab" "$root/srv/lab" "$root/etc/target"

kver=$(ls "$root/lib/modules" | sort -V | tail -1)
{
	echo "kernel $kver"
	chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' nvme-cli open-iscsi multipath-tools lvm2 udev
} >"$out/versions.txt"
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"

cleanup
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/boot/"*
if [ -n "$base" ]; then
	umount "$root"
	rmdir "$root"
else
	truncate -s 2G "$out/rootfs.img"
	mkfs.ext4 -q -F -L labroot -d "$root" "$out/rootfs.img"
	rm -rf "$root"
fi
echo "lab: image ready: $(tr '\n' ' ' <"$out/versions.txt")"
