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

	guard func() error // WithWriteGuard

	mu  sync.Mutex
	ver *Version
	// cache, when set, keeps the version in /run across plugin
	// processes (see WithVersionCache).
	cache *host.Root
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

// exec runs `lvm <sub> -qq --config <cfg> <args...>`. Repeatable commands
// are retried on metadata checksum errors, which a reader sees while the
// master rewrites the metadata; metadata changes are never retried here,
// because only the caller knows whether repeating one is safe.
func (c *Client) exec(ctx context.Context, s Scope, m mode, sub string, args ...string) ([]byte, error) {
	v, err := c.Version(ctx)
	if err != nil {
		return nil, err
	}
	cfg, err := BuildConfig(v, s)
	if err != nil {
		return nil, host.NewError(host.KindInvalid, "lvm "+sub, "bad LVM scope", "", err)
	}
	if m == once && s.ReadOnly {
		// The last line of defence: lvm2 2.03 ignores metadata_read_only.
		return nil, host.NewError(host.KindNotMaster, "lvm "+sub, "refusing an LVM metadata change on a host that is not the pool master",
			"run the operation on the pool master", nil)
	}
	if m == once && c.guard != nil {
		if err := c.guard(); err != nil {
			return nil, err
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
	var out []byte
	var last error // the run that failed, for when ctx ends between retries
	attempt := 0
	err = host.Poll(ctx, c.RetryDelay, func(ctx context.Context) (bool, error) {
		res, err := c.run.Run(ctx, host.Cmd{Name: "lvm", Args: argv, Timeout: timeout})
		if err == nil {
			if rerr := readOnlyRefusal(op, argv, res); rerr != nil {
				return false, rerr
			}
			out = res.Stdout
			return true, nil
		}
		if m != once && attempt < c.ReadRetries && isChecksumError(err) {
			attempt++
			last = err
			c.log.Info("LVM metadata changed under a reader; retrying", zap.String("cmd", op), zap.Int("attempt", attempt))
			return false, nil
		}
		return false, classify(op, err)
	})
	if te := (*host.TimeoutError)(nil); errors.As(err, &te) {
		return nil, classify(op, last)
	}
	return out, err
}
