#!/bin/sh
# sanvol %postun. $1 is 0 after an erase, 1 or more after an upgrade.
[ "$1" = 0 ] || exit 0
if command -v systemctl >/dev/null 2>&1 && systemctl cat xapi-storage-script.service >/dev/null 2>&1; then
	systemctl try-restart xapi-storage-script.service || :
fi
echo "sanvol: removed. Run xe-toolstack-restart so that xapi drops the SR types nvmetcp and iscsi-ng (xe sm-list)."
exit 0
