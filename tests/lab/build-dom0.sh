#!/bin/bash
# build-dom0.sh BASE_DIR OUT_DIR MIRROR DOM0_TOOLS_DIR
#
# Derives the XCP-ng 8.x dom0-tools guest image (run.sh --dom0 xcpng8) from
# a cached Debian guest image in BASE_DIR (build-image.sh's output, same
# kernel): the same kernel, initrd and root file system, plus XCP-ng 8.x
# dom0's storage tools (lvm2 2.02.180, open-iscsi 2.0.874, multipath-tools
# 0.4.9) built from DOM0_TOOLS_DIR (the project's shared/dom0-tools:
# sources, XCP-ng's patches and build.sh) inside the guest's root, so they
# link against the guest's libraries, and installed under /opt/xcpng8.
# Debian's packages stay; guest/init.sh puts the dom0 tools ahead of them
# at boot (wrappers in /usr/local/sbin), so what a run uses can change
# without a rebuild. Deriving keeps the Debian image (and its cache key)
# untouched and saves a second debootstrap. Needs root and a loop device.
set -euo pipefail

base=$1 out=$2 mirror=$3 tools=$4
mnt=$out/mnt
cleanup() {
	for m in dev/pts dev proc sys ""; do
		mountpoint -q "$mnt/$m" && umount -l "$mnt/$m"
	done
	return 0
}
trap cleanup EXIT

cp "$base/vmlinuz" "$base/initrd.img" "$out/"
cp --sparse=always "$base/rootfs.img" "$out/rootfs.img"
# Room for the compilers and the build trees (purged again below).
truncate -s 4G "$out/rootfs.img"
e2fsck -fy "$out/rootfs.img" >/dev/null 2>&1 || true
resize2fs "$out/rootfs.img" >/dev/null 2>&1
mkdir -p "$mnt"
mount -o loop "$out/rootfs.img" "$mnt" || { echo "lab: cannot loop-mount the guest image (need root and /dev/loop*)"; exit 1; }
mount -t proc proc "$mnt/proc"
mount -t sysfs sys "$mnt/sys"
mount --bind /dev "$mnt/dev"
mount --bind /dev/pts "$mnt/dev/pts"

echo "lab: building XCP-ng 8.x dom0's lvm2, open-iscsi and multipath-tools in the guest's root"
deps="build-essential pkg-config libaio-dev libblkid-dev libudev-dev libreadline-dev libdevmapper-dev
	libsystemd-dev libjson-c-dev libmount-dev libssl-dev libisns-dev patch"
chroot "$mnt" dpkg-query -W -f '${Package}\n' | sort >"$out/pkgs.before"
echo "deb $mirror bookworm main" >"$mnt/etc/apt/sources.list.d/dom0-build.list"
chroot "$mnt" /bin/sh -c "DEBIAN_FRONTEND=noninteractive apt-get -q update && \
	DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install $(echo $deps)" \
	>"$out/dom0-build.log" 2>&1 || { tail -30 "$out/dom0-build.log"; exit 1; }
rm -rf "$mnt/tmp/dom0-tools" "$mnt/tmp/dom0-out"
cp -r "$tools" "$mnt/tmp/dom0-tools"
mkdir -p "$mnt/opt/xcpng8"
built=()
for t in lvm2 open-iscsi multipath; do
	# lvm2 is the point of the mode; the other two are used when they
	# build (init.sh keeps Debian's for a missing one).
	if chroot "$mnt" /bin/bash /tmp/dom0-tools/build.sh /tmp/dom0-out "$t" >>"$out/dom0-build.log" 2>&1; then
		cp -a "$mnt/tmp/dom0-out/$t/opt/xcpng8/." "$mnt/opt/xcpng8/"
		built+=("$t")
	else
		if [ "$t" = lvm2 ]; then tail -40 "$out/dom0-build.log"; exit 1; fi
		echo "lab: $t did not build (see $out/dom0-build.log); the guest keeps Debian's"
	fi
done
rm -rf "$mnt/tmp/dom0-tools" "$mnt/tmp/dom0-out"
chroot "$mnt" dpkg-query -W -f '${Package}\n' | sort >"$out/pkgs.after"
# The build packages go again, except what the built tools load. The
# packages holding the libraries `ldd` names are kept, and so are their own
# dependencies: apt works them out, since every package the build brought is
# marked automatic and only the runtime ones manual before autoremove. (A
# plain purge of the build packages once took libreadline8 along with
# readline-common, its dependency, and lvm 2.02.180 could not start.)
# ldd_tools prints each built tool's and plugin's ldd output, with the
# library path init.sh's wrapper gives that tool.
cat >"$mnt/tmp/ldd-tools.sh" <<'LDD'
for f in /opt/xcpng8/sbin/* /opt/xcpng8/lib/*.so* /opt/xcpng8/lib64/*.so* /opt/xcpng8/lib64/multipath/*.so; do
	[ -f "$f" ] && [ ! -L "$f" ] || continue
	case $f in
	*/lib64/* | */multipath* | */mpathpersist | */kpartx | */mpathconf) lp=/opt/xcpng8/lib64 ;;
	*/iscsi*) lp= ;;
	*) lp=/opt/xcpng8/lib ;;
	esac
	out=$(LD_LIBRARY_PATH=$lp ldd "$f" 2>/dev/null) || continue # a script, not an ELF file
	printf '%s\n' "$out" | sed "s|^|$f: |"
done
LDD
chroot "$mnt" /bin/sh /tmp/ldd-tools.sh >"$out/ldd.before"
awk '$3 == "=>" && $4 ~ /^\// && $4 !~ /^\/opt\// { print $4 }' "$out/ldd.before" | sort -u |
	while read -r l; do
		chroot "$mnt" /bin/sh -c "dpkg -S '$l' 2>/dev/null || dpkg -S \"\$(readlink -f '$l')\" 2>/dev/null || dpkg -S '/usr$l' 2>/dev/null" ||
			{ echo "lab: no package holds $l, which the dom0 tools load"; exit 1; }
	done | cut -d: -f1 | sort -u >"$out/pkgs.runtime"
new=$(comm -13 "$out/pkgs.before" "$out/pkgs.after" | tr '\n' ' ')
echo "lab: the dom0 tools' libraries kept: $(tr '\n' ' ' <"$out/pkgs.runtime")"
chroot "$mnt" /bin/sh -c "apt-mark manual $(tr '\n' ' ' <"$out/pkgs.before") >/dev/null &&
	apt-mark auto $new >/dev/null && apt-mark manual $(tr '\n' ' ' <"$out/pkgs.runtime") >/dev/null &&
	DEBIAN_FRONTEND=noninteractive apt-get -q -y autoremove --purge" >>"$out/dom0-build.log" 2>&1 ||
	{ tail -30 "$out/dom0-build.log"; exit 1; }
# The image fails here rather than in a lab run: every built tool must
# still find every library it loads.
chroot "$mnt" /bin/sh /tmp/ldd-tools.sh >"$out/ldd.after"
if grep 'not found' "$out/ldd.after"; then
	echo "lab: the dom0 tools above lack libraries after the build packages were purged (see $out/dom0-build.log)"
	exit 1
fi
for t in lvm multipath multipathd iscsiadm iscsid; do
	[ ! -e "$mnt/opt/xcpng8/sbin/$t" ] || grep -q "^/opt/xcpng8/sbin/$t: " "$out/ldd.after" ||
		{ echo "lab: ldd gave nothing for /opt/xcpng8/sbin/$t"; exit 1; }
done
rm -f "$mnt/tmp/ldd-tools.sh" "$out/ldd.before" "$out/ldd.after"
rm -f "$out/pkgs.before" "$out/pkgs.after" "$out/pkgs.runtime" "$mnt/etc/apt/sources.list.d/dom0-build.list"
rm -rf "$mnt/var/cache/apt/archives/"*.deb "$mnt/var/lib/apt/lists/"*
printf '%s\n' "${built[@]}" >"$mnt/opt/xcpng8/BUILT"
echo xcpng8 >"$mnt/etc/sanvol-lab-dom0"
{
	cat "$base/versions.txt"
	echo "xcpng8 (ahead of Debian's): ${built[*]}"
} >"$out/versions.txt"
cleanup
rmdir "$mnt"
echo "lab: dom0 image ready: $(tr '\n' ' ' <"$out/versions.txt")"
