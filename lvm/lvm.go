// Package lvm drives lvm2 for sanvol. Every LVM command of the product
// goes through Client.exec: one process per question, a deadline, the C
// locale, -qq, JSON reports in bytes, and a --config that admits only the
// SR's device and forbids metadata writes on hosts that are not the pool
// master. It works with lvm2 2.02.180 (XCP-ng 8.x dom0) and 2.03.
package lvm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// Client runs LVM commands. It is safe for concurrent use.
type Client struct {
	run host.Runner
	log *zap.Logger

	// ReadTimeout bounds a report; WriteTimeout a metadata change, which
	// rewrites the whole VG metadata (megabytes at 10,000 volumes).
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// ReadRetries is how often a report is repeated after a metadata
	// checksum error, RetryDelay the pause before each repeat.
	ReadRetries int
	RetryDelay  time.Duration
	// StampTimeout bounds the report cache's read of the metadata area
	// headers; past it the report runs (WithReportCache).
	StampTimeout time.Duration

	guard func() error // WithWriteGuard

	mu  sync.Mutex
	ver *Version
	// cache, when set, keeps the version in /run across plugin
	// processes (see WithVersionCache).
	cache *host.Root
	// reports, when set, keeps metadata-only reports (WithReportCache).
	reports *reportCache
	// dm, when set, gives LV and LVs their activation state
	// (WithDMStatus).
	dm host.DMStatusReader
}

// VersionCacheFile remembers the lvm2 version across plugin processes.
const VersionCacheFile = "/run/sanvol/lvm-version"

// WithWriteGuard makes every metadata change ask guard first and refuse
// when it fails. The plugin re-reads the pool role there: a master change
// (xe pool-designate-new-master) does not wait for running calls, so a
// call that started on the master checks before each of its lvm writes
// that it still is one (docs/design.md, "The pool model").
func (c *Client) WithWriteGuard(guard func() error) *Client {
	c.guard = guard
	return c
}

// WithVersionCache makes the client remember the lvm2 version in
// VersionCacheFile, keyed by the lvm binary's path, size and mtime, so an
// upgrade of lvm2 is noticed. Every plugin call is a new process, so
// without it Volume.stat, the hottest call, would spawn `lvm version`
// before its one report.
func (c *Client) WithVersionCache(root host.Root) *Client {
	c.cache = &root
	return c
}

// cacheKey identifies the installed lvm binary.
func (c *Client) cacheKey() (string, bool) {
	bin, err := c.cache.LookPath("lvm")
	if err != nil {
		return "", false
	}
	st, err := c.cache.Stat(bin)
	if err != nil {
		return "", false
	}
	return fmt.Sprintf("%s %d %d", bin, st.Size(), st.ModTime().UnixNano()), true
}

// New returns a client with production timeouts.
func New(run host.Runner, log *zap.Logger) *Client {
	if log == nil {
		log = zap.NewNop()
	}
	return &Client{
		run:          run,
		log:          log,
		ReadTimeout:  60 * time.Second,
		WriteTimeout: 120 * time.Second,
		ReadRetries:  10,
		RetryDelay:   200 * time.Millisecond,
		StampTimeout: 5 * time.Second,
	}
}

// Version returns the host's lvm2 release, asking `lvm version` once per
// client (that is, once per plugin process).
func (c *Client) Version(ctx context.Context) (Version, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ver != nil {
		return *c.ver, nil
	}
	key, keyed := "", false
	if c.cache != nil {
		key, keyed = c.cacheKey()
	}
	if keyed {
		if b, err := c.cache.ReadFile(VersionCacheFile); err == nil {
			if k, v, ok := strings.Cut(strings.TrimSpace(string(b)), "\n"); ok && k == key {
				if ver, err := ParseVersion("LVM version: " + v); err == nil {
					c.ver = &ver
					return ver, nil
				}
			}
		}
	}
	res, err := c.run.Run(ctx, host.Cmd{Name: "lvm", Args: []string{"version"}, Timeout: c.ReadTimeout})
	if err != nil {
		return Version{}, classify("lvm version", err)
	}
	v, err := ParseVersion(string(res.Stdout))
	if err != nil {
		return Version{}, host.NewError(host.KindUnsupported, "lvm version", "cannot tell which lvm2 this host has", "check that `lvm version` works", err)
	}
	c.ver = &v
	c.log.Debug("lvm version", zap.Stringer("version", v))
	if keyed {
		// A lost write only costs the next process one `lvm version`.
		_ = c.cache.WriteFileAtomic(VersionCacheFile, []byte(key+"\n"+v.String()+"\n"), 0o644)
	}
	return v, nil
}

// mode says how a command may be run: whether repeating it after a
// metadata checksum error is safe, and which deadline applies.
type mode int

const (
	// report: reports, which write nothing.
	report mode = iota
	// activation: activation changes, which write no metadata.
	activation
	// once: metadata changes.
	once
)

// command is one prepared LVM command line.
type command struct {
	m       mode
	op      string // "lvm <sub> <object>", for errors and logs
	argv    []string
	timeout time.Duration
	version Version
}

// prepare builds `lvm <sub> -qq --config <cfg> <args...>` and refuses
// metadata changes the scope or the write guard forbid.
func (c *Client) prepare(ctx context.Context, s Scope, m mode, sub string, args ...string) (command, error) {
	v, err := c.Version(ctx)
	if err != nil {
		return command{}, err
	}
	cfg, err := BuildConfig(v, s)
	if err != nil {
		return command{}, host.NewError(host.KindInvalid, "lvm "+sub, "bad LVM scope", "", err)
	}
	if m == once && s.ReadOnly {
		// The last line of defence: lvm2 2.03 ignores metadata_read_only.
		return command{}, host.NewError(host.KindNotMaster, "lvm "+sub, "refusing an LVM metadata change on a host that is not the pool master",
			"run the operation on the pool master", nil)
	}
	if m == once && c.guard != nil {
		if err := c.guard(); err != nil {
			return command{}, err
		}
	}
	argv := []string{sub, "-qq", "--config", cfg}
	if m == report && s.Unlocked {
		argv = append(argv, "--readonly")
	}
	argv = append(argv, args...)
	timeout := c.ReadTimeout
	if m == once {
		timeout = c.WriteTimeout
	}
	// The last argument names the object (VG, LV or device); the whole
	// command line, with every tag, is in the cause.
	op := "lvm " + sub
	if len(args) > 0 && !strings.HasPrefix(args[len(args)-1], "-") {
		op += " " + args[len(args)-1]
	}
	return command{m: m, op: op, argv: argv, timeout: timeout, version: v}, nil
}

// exec runs `lvm <sub> -qq --config <cfg> <args...>`.
func (c *Client) exec(ctx context.Context, s Scope, m mode, sub string, args ...string) ([]byte, error) {
	cmd, err := c.prepare(ctx, s, m, sub, args...)
	if err != nil {
		return nil, err
	}
	return c.run1(ctx, cmd)
}

// metaReport runs a report whose output depends on the VG metadata alone
// (no device-mapper state, no device names), answering it from the report
// cache when the metadata area headers are what they were when the
// cached copy was read.
//
// The stamp is read BEFORE the report runs. A commit (from this host or
// from the master, on a member) that lands between the stamp read and
// LVM's own read makes the report newer than its stamp: it is stored
// under a header state that is already gone and never comes back (see
// stamp.go), so it can only be missed, never served. The other order
// (report, then stamp) would store an old report under the new header:
// a stale hit. A report never sees metadata older than the stamp: LVM
// reads the device itself, with O_DIRECT (lvm2 lib/label/label.c,
// _scan_dev_open), after the stamp was read the same way, and BuildConfig
// turns off the host-wide caches that could answer instead (lvmetad in
// 2.02, hints in 2.03).
func (c *Client) metaReport(ctx context.Context, s Scope, sub string, args ...string) ([]byte, error) {
	cmd, err := c.prepare(ctx, s, report, sub, args...)
	if err != nil {
		return nil, err
	}
	if c.reports == nil || s.Uncached {
		return c.run1(ctx, cmd)
	}
	st, err := c.reports.read(ctx, s.Devices, c.StampTimeout)
	if err != nil {
		c.log.Debug("no LVM metadata stamp; running the report", zap.String("cmd", cmd.op), zap.Error(err))
		return c.run1(ctx, cmd)
	}
	// The lvm2 release is part of the key: an upgrade may print reports
	// differently.
	key := cmd.version.String() + "\x00" + strings.Join(cmd.argv, "\x00")
	if e, ok := c.reports.get(key, st); ok {
		c.log.Debug("LVM answer from the cache (metadata unchanged)", zap.String("cmd", cmd.op), zap.String("kind", e.kind))
		switch e.kind {
		case entryReport:
			return e.data, nil
		case entryMissingLV:
			return nil, classify(cmd.op, &host.ExitError{Cmd: "lvm " + strings.Join(cmd.argv, " "), Code: 5, Stderr: string(e.data)})
		}
	}
	out, err := c.run1(ctx, cmd)
	e := entry{kind: entryReport, data: out}
	if err != nil {
		// A missing LV is an answer of the metadata too: Volume.stat of
		// a snapshot asks for its key's LV first, which is not there.
		var ee *host.ExitError
		if MissingOf(err) != MissingLV || !errors.As(err, &ee) {
			return nil, err
		}
		e = entry{kind: entryMissingLV, data: []byte(ee.Stderr)}
	}
	if perr := c.reports.put(key, st, e); perr != nil {
		c.log.Debug("LVM answer not cached", zap.String("cmd", cmd.op), zap.Error(perr))
	}
	return out, err
}

// run1 runs a prepared command. Repeatable commands are retried on
// metadata checksum errors, which a reader sees while the master rewrites
// the metadata; metadata changes are never retried here, because only the
// caller knows whether repeating one is safe.
func (c *Client) run1(ctx context.Context, cmd command) ([]byte, error) {
	var out []byte
	var last error // the run that failed, for when ctx ends between retries
	attempt := 0
	err := host.Poll(ctx, c.RetryDelay, func(ctx context.Context) (bool, error) {
		res, err := c.run.Run(ctx, host.Cmd{Name: "lvm", Args: cmd.argv, Timeout: cmd.timeout})
		if err == nil {
			if rerr := readOnlyRefusal(cmd.op, cmd.argv, res); rerr != nil {
				return false, rerr
			}
			out = res.Stdout
			return true, nil
		}
		if cmd.m != once && attempt < c.ReadRetries && isChecksumError(err) {
			attempt++
			last = err
			c.log.Info("LVM metadata changed under a reader; retrying", zap.String("cmd", cmd.op), zap.Int("attempt", attempt))
			return false, nil
		}
		return false, classify(cmd.op, err)
	})
	if te := (*host.TimeoutError)(nil); errors.As(err, &te) {
		return nil, classify(cmd.op, last)
	}
	return out, err
}
