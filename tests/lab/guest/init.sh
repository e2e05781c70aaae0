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

# acct_summary: CPU seconds by command name, from the accounting file
# (struct acct_v3: comp_t times in 1/100 s) for the processes that ended,
# and from /proc for the daemons still running; then /proc/stat's split
# (kernel threads, nvmet and softirq land in system/softirq).
acct_summary() {
	perl -e 'syscall(163, 0)'
	perl -e '
		sub comp { my $c = shift; ($c & 0x1fff) << (3 * ($c >> 13)) }
		open(my $f, "<", "/run/acct") or die;
		binmode $f;
		my (%cpu, %n, %comm, @lvm);
		while (read($f, my $r, 64) == 64) {
			my @a = unpack("C C S L L L L L L f S S S S S S S S Z16", $r);
			my $t = (comp($a[10]) + comp($a[11])) / 100;
			$cpu{$a[18]} += $t; $n{$a[18]}++;
			$comm{$a[6]} = $a[18];
			push @lvm, [$a[18], $a[7], $t] if $a[18] =~ /^(lvm|dmsetup|multipath|kpartx|blkid)$/;
		}
		for my $s (glob "/proc/[0-9]*/stat") {
			open(my $g, "<", $s) or next; my $l = <$g>; close $g;
			$l =~ /^(\d+) \((.*)\) \S+ (.*)/ or next; $comm{$1} //= $2;
			$l =~ /^\d+ \((.*)\) \S+ (.*)/ or next; my @x = split / /, $2;
			next if $x[5] == 0 && $x[6] == 0 || $1 =~ /^(kworker|ksoftirq|rcu|migration|cpuhp|kthreadd)/;
			$cpu{"$1 (running)"} += ($x[10] + $x[11]) / 100; $n{"$1 (running)"}++;
		}
		my $tot = 0; $tot += $_ for values %cpu;
		printf "%-28s %9s %7s %9s\n", "command", "cpu s", "count", "s each";
		for my $k (sort { $cpu{$b} <=> $cpu{$a} } keys %cpu) {
			printf "%-28s %9.2f %7d %9.3f\n", $k, $cpu{$k}, $n{$k}, $cpu{$k} / $n{$k};
		}
		printf "%-28s %9.2f\n", "all processes", $tot;
		# Who starts the storage tools: the sanvol methods, udev (its rules),
		# the scenarios themselves. A parent that ended before a reused pid
		# may be misnamed; the split is an estimate.
		my (%pc, %pn);
		for (@lvm) { my $p = "$_->[0] from " . ($comm{$_->[1]} // "?"); $pc{$p} += $_->[2]; $pn{$p}++ }
		printf "\nstorage tools by parent:\n";
		printf "  %-40s %9.2f %7d\n", $_, $pc{$_}, $pn{$_} for sort { $pc{$b} <=> $pc{$a} } keys %pc;
	'
	awk '/^cpu /{printf "proc/stat: user %.0f s, system %.0f s, irq %.0f s, softirq %.0f s, idle %.0f s\n", $2/100, $4/100, $7/100, $8/100, $5/100}' /proc/stat
	grep -H . /sys/devices/system/cpu/vulnerabilities/* | sed 's|.*/||'
	# Block uevents by action and device, busiest first.
	printf '\nblock uevents by action and device:\n'
	awk '$1 ~ /^KERNEL\[/ { n = split($3, p, "/"); c[$2 " " p[n]]++; t[$2]++ }
		END { for (k in t) printf "  %-30s %6d\n", k " (all)", t[k]; for (k in c) printf "  %-30s %6d\n", k, c[k] }' \
		/run/uevents.txt 2>/dev/null | sort -k3,3nr
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

# The pool lab (run.sh test --pool): two guests on one qemu socket link.
# The NIC comes up before udevd starts, so it keeps the kernel's name.
# Each guest gets its pool.conf the way xapi writes it: "master", or
# "slave:<master address>" (host.ReadRole).
role=$(cat "$L/pool-role" 2>/dev/null || true)
if [ -n "$role" ]; then
	modprobe -q virtio_net || say "modprobe virtio_net failed"
	nic=
	for n in /sys/class/net/*; do
		[ "${n##*/}" = lo ] || { nic=${n##*/}; break; }
	done
	ip link set "$nic" up
	mkdir -p /etc/xensource
	case $role in
	master)
		hostname pool-a
		ip addr add 10.99.0.1/24 dev "$nic"
		ip addr add 10.99.0.2/24 dev "$nic"
		echo master >/etc/xensource/pool.conf
		;;
	member)
		hostname pool-b
		ip addr add 10.99.0.20/24 dev "$nic"
		echo slave:10.99.0.1 >/etc/xensource/pool.conf
		;;
	esac
	say "pool $role on $nic: $(ip -o -4 addr show dev "$nic" | awk '{print $4}' | tr '\n' ' ')"
	# /usr/local/sbin first, as host.ExecDirs orders it: the tools sanvol
	# starts are looked up in its caller's PATH (os/exec), and the pool
	# scenarios' lvm wrapper goes there (tests/e2e/pool_inflight_test.go).
	PATH=/usr/local/sbin:$PATH
	export PATH
fi

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

mpdir=
# XCP-ng 8.x dom0's tools (image built with run.sh --dom0 xcpng8): they sit
# in /opt/xcpng8, built from ../shared/dom0-tools, and go ahead of Debian's
# through wrappers in /usr/local/sbin (first in PATH for the scenarios, and
# first in host.ExecDirs for sanvol). Their own libraries are not Debian's
# (lvm2's libdevmapper 1.02.149), so only the wrappers see them.
if [ "$(cat /etc/sanvol-lab-dom0 2>/dev/null)" = xcpng8 ]; then
	mkdir -p /usr/local/sbin /run/lock/lvm /etc/lvm/master /etc/lvm/cache
	built=$(cat /opt/xcpng8/BUILT)
	for f in /opt/xcpng8/sbin/*; do
		n=${f##*/}
		case $n in
		iscsi*) tool=open-iscsi env= ;;
		multipath* | mpathpersist | kpartx | mpathconf) tool=multipath env="LD_LIBRARY_PATH=/opt/xcpng8/lib64" ;;
		# dom0's lvm.conf is /etc/lvm/lvm.conf; sm points LVM_SYSTEM_DIR
		# at /etc/lvm/master for writes, so a caller's value is kept.
		*) tool=lvm2 env='LD_LIBRARY_PATH=/opt/xcpng8/lib LVM_SYSTEM_DIR=${LVM_SYSTEM_DIR:-/etc/lvm}' ;;
		esac
		case " $(echo $built) " in *" $tool "*) ;; *) continue ;; esac
		printf '#!/bin/sh\n%s exec %s "$@"\n' "${env:+export $env;}" "$f" >"/usr/local/sbin/$n"
		chmod 755 "/usr/local/sbin/$n"
	done
	# dom0's lvm.conf, made the way sm's RPM makes it (xcp-ng/sm
	# mk/sm.spec.in %post) from the lvm.conf lvm2 2.02.180 installs:
	# master/lvm.conf for writes, lvm.conf with metadata_read_only = 1.
	# `make install` does not install lvm2's lvm.conf; its settings are
	# lvm2's defaults, which lvmconfig prints in the same "key = value"
	# form.
	conf=/opt/xcpng8/etc/lvm/lvm.conf
	if [ ! -s "$conf" ]; then
		conf=/run/lvm-2.02-defaults.conf
		/usr/local/sbin/lvm lvmconfig --type default --withspaces >"$conf"
	fi
	sed -e 's/metadata_read_only =.*/metadata_read_only = 0/' -e 's/archive = .*/archive = 0/' \
		-e 's/udev_sync = 1/udev_sync = 0/' -e 's/udev_rules = 1/udev_rules = 0/' \
		-e 's/obtain_device_list_from_udev = 1/obtain_device_list_from_udev = 0/' \
		-e 's/write_cache_state = 1/write_cache_state = 0/' \
		"$conf" >/etc/lvm/master/lvm.conf
	sed 's/metadata_read_only =.*/metadata_read_only = 1/' /etc/lvm/master/lvm.conf >/etc/lvm/lvm.conf
	: >/etc/lvm/cache/.cache
	# The lab's filter (pitfall 5) without the 2.03-only setting, which
	# 2.02.180 would warn about on every command.
	sed '/use_devicesfile/d' /etc/lvm/lvmlocal.conf >/etc/lvm/master/lvmlocal.conf
	cp /etc/lvm/master/lvmlocal.conf /etc/lvm/lvmlocal.conf
	# dom0 has no udev auto-activation (no lvmetad); Debian's rule would
	# run Debian's lvm 2.03 on every PV that appears.
	: >/etc/udev/rules.d/69-lvm.rules
	case " $(echo $built) " in *" multipath "*) mpdir="	multipath_dir /opt/xcpng8/lib64/multipath" ;; esac
	PATH=/usr/local/sbin:$PATH
	export PATH
	say "XCP-ng 8.x dom0 tools ahead of Debian's: $(echo $built)"
fi

# multipath-tools 0.4.9 looks for its checkers in /lib64/multipath unless
# told (dom0 mode only).
cat >/etc/multipath.conf <<MP
defaults {
	find_multipaths no
	user_friendly_names no
$mpdir
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

# sanvol's udev rules, where its RPM puts them (packaging/sanvol.spec);
# run.sh copies them from packaging/udev.
if [ -d "$L/udev" ]; then
	mkdir -p /usr/lib/udev/rules.d
	cp "$L"/udev/*.rules /usr/lib/udev/rules.d/
fi

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
# BSD process accounting (the host asked with SANVOL_LAB_ACCT=1): perl's
# syscall() is acct(2) (163 on x86_64); no package needed.
if [ -f "$L/acct" ]; then
	: >/run/acct
	perl -e 'my $p = "/run/acct"; syscall(163, $p) == 0 or die "acct: $!\n"' || rm -f /run/acct
	# The block devices' uevents as the kernel sent them (udevd's own
	# "change" for a watched device it saw closed after a write comes
	# through the kernel too), for the summary's count by device.
	stdbuf -oL udevadm monitor --kernel --subsystem-match=block >/run/uevents.txt 2>/dev/null &
	umon=$!
fi
{
	timeout -k 15 "$limit" sh "$L/cmd"
	echo $? >"$OUT/cmd.rc"
} 2>&1 | tee "$OUT/test.log"
rc=$(cat "$OUT/cmd.rc" 2>/dev/null || echo 1)
[ "$rc" = 124 ] && say "the command ran out of its ${limit}s"
say "command exited $rc after $(cut -d' ' -f1 /proc/uptime) s of uptime"
# What the guest asked of the host's cores: under TCG an idle vCPU halts,
# so busy time is the scenario's CPU demand, the figure that decides how
# many guests the host's cores carry side by side (docs/benchmarks.md).
[ -z "${umon:-}" ] || kill "$umon"
[ ! -f /run/acct ] || acct_summary >"$OUT/acct.txt" 2>&1
say "cpu: $(awk '/^cpu /{b=$2+$3+$4+$7+$8; printf "%.0f s busy, %.0f s idle (all vCPUs)", b/100, ($5+$6)/100}' /proc/stat)"
finish "$rc"
