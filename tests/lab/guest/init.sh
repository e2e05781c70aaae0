#!/bin/sh
# The lab guest's real init, run as PID 1 by /sbin/lab-init from the 9p
# share (/lab). It brings up only what the scenarios need, runs the command
# in /lab/cmd under a deadline, writes the results to /lab/out and powers the
# guest off. Every fix here is one of docs/lab-pitfalls.md.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
L=/lab
OUT=$L/out
mkdir -p "$OUT"
exec 2>>"$OUT/init.log"

say() { echo "lab: $*"; echo "$(date +%T) $*" >>"$OUT/init.log"; }

finish() {
	echo "$1" >"$OUT/rc"
	dmesg >"$OUT/dmesg.txt" 2>&1
	sync
	echo o >/proc/sysrq-trigger
	sleep 30
}

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /run/lvm /run/multipath /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
# Target backing files live here (pitfall 3/4): tmpfs, so the targets need
# buffered I/O, and 75% of RAM so two LUNs cannot fill it.
mount -t tmpfs -o size=75% tmpfs /srv/lab
hostname lab
ip link set lo up

for m in nvme-tcp nvme-fabrics nvmet nvmet-tcp iscsi_tcp sd_mod target_core_mod \
	target_core_file iscsi_target_mod dm_mod dm_multipath dm_round_robin \
	dm_service_time scsi_dh_alua; do
	modprobe -q "$m" || say "modprobe $m failed"
done
# configfs is a module too: nvmet and target_core_mod have loaded it now.
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config

# Identities are made per boot, never baked into the image (pitfall 2).
u=$(cat /proc/sys/kernel/random/uuid)
mkdir -p /etc/nvme
echo "nqn.2014-08.org.nvmexpress:uuid:$u" >/etc/nvme/hostnqn
echo "$u" >/etc/nvme/hostid
echo "InitiatorName=$(iscsi-iname)" >/etc/iscsi/initiatorname.iscsi

# LVM sees only NVMe namespaces and device-mapper devices: never the vda root
# disk, never the sd paths under a multipath map (pitfall 5). lvmlocal.conf
# is read after lvm.conf and overrides it.
cat >/etc/lvm/lvmlocal.conf <<'LVM'
devices {
	global_filter = [ "a|^/dev/nvme[0-9]+n[0-9]+$|", "a|^/dev/mapper/|", "a|^/dev/dm-[0-9]+$|", "r|.*|" ]
	use_devicesfile = 0
}
LVM

cat >/etc/multipath.conf <<'MP'
defaults {
	find_multipaths no
	user_friendly_names no
}
blacklist {
	devnode "^(vd|loop|ram|nvme)"
}
MP

# The default replacement_timeout of 120 s stalls I/O for two minutes when a
# path goes (pitfall 10). Node records copy these at discovery time.
sed -i \
	-e 's/^node\.session\.timeo\.replacement_timeout = .*/node.session.timeo.replacement_timeout = 10/' \
	-e 's/^node\.conn\[0\]\.timeo\.noop_out_interval = .*/node.conn[0].timeo.noop_out_interval = 2/' \
	-e 's/^node\.conn\[0\]\.timeo\.noop_out_timeout = .*/node.conn[0].timeo.noop_out_timeout = 2/' \
	/etc/iscsi/iscsid.conf

# udev: only block devices are replayed; a full coldplug costs ~8 s under
# TCG (pitfall 11). Without /run/systemd/system, 69-lvm.rules activates VGs
# itself as soon as their PV appears: scenarios must expect that.
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add --subsystem-match=block
udevadm settle --timeout=30
iscsid || say "iscsid failed to start"
multipathd || say "multipathd failed to start"
# Only critical kernel messages (panics, lockups) on the console, which is
# what a person reads; the full log goes to out/dmesg.txt. tmpfs backing
# files make every WRITE_ZEROES fail loudly, harmlessly (pitfall 3).
dmesg -n 3
say "up after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"

if [ ! -f "$L/cmd" ]; then
	say "no /lab/cmd: nothing to run"
	finish 2
fi
limit=$(cat "$L/timeout" 2>/dev/null || echo 600)
export SANVOL_LAB=1 SANVOL_LAB_DIR=$L SANVOL_LAB_SRV=/srv/lab HOME=/root
# Not /lab: a scenario's relative paths must never touch the share.
cd /root
say "running $(cat "$L/cmd") (limit ${limit}s)"
# The host shows the kernel log from here on when the command fails.
cut -d' ' -f1 /proc/uptime >"$OUT/cmd-start-uptime"
{
	timeout -k 15 "$limit" sh "$L/cmd"
	echo $? >"$OUT/cmd.rc"
} 2>&1 | tee "$OUT/test.log"
rc=$(cat "$OUT/cmd.rc" 2>/dev/null || echo 1)
[ "$rc" = 124 ] && say "the command ran out of its ${limit}s"
say "command exited $rc after $(cut -d' ' -f1 /proc/uptime) s of uptime"
finish "$rc"
