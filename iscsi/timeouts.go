package iscsi

import "time"

// Timeouts bound every wait of the transport. xapi has no timeout of its
// own, so each of these is what keeps a dead portal from hanging a VM start.
type Timeouts struct {
	Command   time.Duration // an ordinary iscsiadm, multipath or dmsetup call
	Discovery time.Duration // sendtargets discovery on one portal
	// LoginTimeout (node.conn[0].timeo.login_timeout, seconds) and
	// LoginRetries (node.session.initial_login_retry_max) bound one
	// login: an unreachable portal costs (LoginRetries+1)×LoginTimeout.
	LoginTimeout int
	LoginRetries int
	DeviceWait   time.Duration // for the LUN's disks to appear after login
	MapWait      time.Duration // for the multipath map
	Flush        time.Duration // multipath -f
	Lock         time.Duration // for another call on the same target
	Rollback     time.Duration // undoing a failed attach or a probe's logins
	Poll         time.Duration // sysfs polling step
}

// DefaultTimeouts are the production values.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Command:      30 * time.Second,
		Discovery:    30 * time.Second,
		LoginTimeout: 10,
		LoginRetries: 1,
		DeviceWait:   30 * time.Second,
		MapWait:      30 * time.Second,
		Flush:        30 * time.Second,
		Lock:         3 * time.Minute,
		Rollback:     2 * time.Minute,
		Poll:         200 * time.Millisecond,
	}
}

// withDefaults gives every zero field its default, as nvme.Timeouts does.
// LoginRetries is the exception, as 0 (no retry) is a setting: it takes
// its default only when the whole value is zero (no Timeouts given).
func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	if t == (Timeouts{}) {
		return d
	}
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&t.Command, d.Command)
	set(&t.Discovery, d.Discovery)
	set(&t.DeviceWait, d.DeviceWait)
	set(&t.MapWait, d.MapWait)
	set(&t.Flush, d.Flush)
	set(&t.Lock, d.Lock)
	set(&t.Rollback, d.Rollback)
	set(&t.Poll, d.Poll)
	if t.LoginTimeout <= 0 {
		t.LoginTimeout = d.LoginTimeout
	}
	return t
}
