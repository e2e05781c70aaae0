// Package blockdev is sanvol's layer for block devices below LVM: what the
// kernel shows of a device and what may be done to it, whichever
// transport made it. It reads device-mapper state from sysfs (DMDevices,
// Holders, Slaves, Size: answers even when the storage is gone), builds
// and switches device-mapper tables through dmsetup (DM), looks for and
// erases signatures with blkid and wipefs (Signatures, Wipe), and zeroes
// byte ranges with the BLKZEROOUT ioctl (Zeroer). Devices and sysfs are
// reached through a host.Root and commands through a host.Runner, so
// tests point it at files and fakes.
package blockdev
