#!/bin/sh
# sanvol %post. $1 is 1 on a first install, 2 or more on an upgrade; both
# (re)build the plugin directories, so an upgrade picks up new methods.
bin=/usr/libexec/sanvol/sanvol
plugin=/usr/libexec/xapi-storage-script/volume/org.xen.xapi.storage.nvmetcp

# Keep the Python shims if the admin installed them for SMAPI tracing
# (docs/install.md): a plain install would turn them back into symlinks.
shims=
if [ -f "$plugin/SR.attach" ] && [ ! -L "$plugin/SR.attach" ]; then
	shims=--observer-shims
fi

# Each plugin directory is built aside and renamed into place, so that
# xapi-storage-script never registers a half-made one.
"$bin" install --root / --binary "$bin" $shims || exit 1

# The daemon picks up new plugin directories by itself; a running one is
# restarted anyway so that it re-reads them all.
if command -v systemctl >/dev/null 2>&1 && systemctl cat xapi-storage-script.service >/dev/null 2>&1; then
	systemctl try-restart xapi-storage-script.service || :
fi
if [ "$1" = 1 ]; then
	echo "sanvol: installed. Run xe-toolstack-restart on this host so that xapi registers the SR types nvmetcp and iscsi-ng (xe sm-list), and install sanvol on every host of the pool."
fi
exit 0
