package transport

import "github.com/sanvol/sanvol/host"

// SecretError is the error of a device-config password that xapi turned
// into a XenAPI secret (<key>_secret = uuid) and that could not be read.
// Its kind is the resolver's, because the resolver knows the cause:
// host.XenAPI answers NotFound for a secret that is not there,
// host.BootSecrets Unreachable when xapi is down and no copy was kept for
// boot, InvalidArgument for a malformed uuid. AuthenticationFailed would
// send the admin to the array's CHAP settings when no target was asked
// anything, and InvalidArgument would blame the device-config when xapi
// is merely down; so both transports give one kind for one cause. A
// resolver that gives no kind is a bug: InternalError.
func SecretError(op, key, uuid string, err error) error {
	return host.NewError(host.KindOf(err), op, "cannot read XenAPI secret "+uuid+" (device-config:"+key+")",
		"check that the secret exists: xe secret-list uuid="+uuid, err)
}
