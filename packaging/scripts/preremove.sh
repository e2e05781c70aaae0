#!/bin/sh
# sanvol %preun. $1 is 0 when the package is erased, 1 or more when an
# upgrade removes the old version: then nothing may be undone.
[ "$1" = 0 ] || exit 0
bin=/usr/libexec/sanvol/sanvol

# Refuse while a sanvol SR is plugged here: removing the plugin would
# leave xapi unable to detach it, and VMs on it stranded. SR.attach
# records every attachment in /run/sanvol/sr (cleared at boot).
plugged=
for f in /run/sanvol/sr/*.json; do
	[ -e "$f" ] || continue
	u=${f##*/}
	plugged="$plugged ${u%.json}"
done
# xapi's view as well, when it answers: a PBD of our types attached here.
if command -v xe >/dev/null 2>&1 && [ -r /etc/xensource-inventory ]; then
	host=$(. /etc/xensource-inventory; echo "$INSTALLATION_UUID")
	xe_q() {
		if command -v timeout >/dev/null 2>&1; then timeout 30 xe "$@"; else xe "$@"; fi
	}
	for t in nvmetcp iscsi-ng; do
		srs=$(xe_q sr-list type="$t" --minimal 2>/dev/null) || srs=
		old_ifs=$IFS
		IFS=,
		for sr in $srs; do
			IFS=$old_ifs
			pbd=$(xe_q pbd-list sr-uuid="$sr" host-uuid="$host" currently-attached=true --minimal 2>/dev/null) || pbd=
			case " $plugged " in *" $sr "*) ;; *) [ -n "$pbd" ] && plugged="$plugged $sr" ;; esac
		done
		IFS=$old_ifs
	done
fi
if [ -n "$plugged" ]; then
	echo "sanvol: refusing to remove sanvol: these sanvol SRs are plugged on this host:$plugged" >&2
	echo "sanvol: unplug them first (xe pbd-list sr-uuid=<sr> host-uuid=<this host>; xe pbd-unplug uuid=<pbd>), then remove the package again." >&2
	exit 1
fi

# `sanvol uninstall` removes the plugin directories and the binary; the
# binary belongs to the package, so a hard link keeps it for rpm to remove
# (rpm warns about files that vanished under it).
keep=/usr/libexec/sanvol/.sanvol-rpm-keep
ln -f "$bin" "$keep" || exit 1
rc=0
"$bin" uninstall --root / || rc=1
[ -e "$bin" ] || mv -f "$keep" "$bin"
rm -f "$keep"
[ "$rc" = 0 ] || echo "sanvol: uninstall failed; the package stays installed" >&2
exit $rc
