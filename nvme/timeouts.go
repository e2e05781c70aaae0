package nvme

import "time"

// Timeouts bound every step; xapi has none of its own.
type Timeouts struct {
	Connect    time.Duration // the connects of one attach, made one after another
	Disconnect time.Duration // one `nvme disconnect`
	Discover   time.Duration // one `nvme discover`
	Modprobe   time.Duration
	Namespace  time.Duration // wait for the namespace head after connecting
	Lock       time.Duration // wait for another attach of the same subsystem
	Rollback   time.Duration // undoing the connects of a failed attach or a probe
	Poll       time.Duration // sysfs polling interval
}

// DefaultTimeouts make a failed attach end within 30 s when every portal is
// unreachable: the connects share one Connect deadline (the kernel runs
// them one at a time; connectPortals), and the wrong-NQN hint adds one
// Discover at most.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Connect:    20 * time.Second,
		Disconnect: 30 * time.Second,
		Discover:   8 * time.Second,
		Modprobe:   15 * time.Second,
		Namespace:  20 * time.Second,
		Lock:       90 * time.Second,
		Rollback:   2 * time.Minute,
		Poll:       100 * time.Millisecond,
	}
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&t.Connect, d.Connect)
	set(&t.Disconnect, d.Disconnect)
	set(&t.Discover, d.Discover)
	set(&t.Modprobe, d.Modprobe)
	set(&t.Namespace, d.Namespace)
	set(&t.Lock, d.Lock)
	set(&t.Rollback, d.Rollback)
	set(&t.Poll, d.Poll)
	return t
}
