package lvm

// The report cache: a report whose output depends on the VG metadata
// alone is kept in /run with the state of the metadata area headers it
// was read under, and answered from there while the headers are
// unchanged. Every plugin call is a new process and every lvm process
// costs 0.2-0.35 s of CPU in the lab (about 1 s for an lvs of a VG with
// hundreds of LVs on a real dom0), and xapi asks Volume.stat three times
// per VM start and SR.stat on every scan (docs/benchmarks.md).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/sanvol/sanvol/host"
)

// ReportCacheDir holds the cached reports: /run is a tmpfs, so a reboot
// empties it. Layout: <PVs>/<stamp>/<report>, each name a hash, so that a
// new stamp makes the old stamp's directory garbage to remove whole.
const ReportCacheDir = "/run/sanvol/lvm-report"

// reportCacheMagic starts every entry file; a change of format changes it.
const reportCacheMagic = "sanvol lvm report 2\n"

// What an entry holds: a report's stdout, or the stderr of an `lvs` that
// found the VG without the LV (MissingLV: an answer from the metadata,
// as much as a report is).
const (
	entryReport    = "report"
	entryMissingLV = "missing-lv"
)

// entry is a stored answer.
type entry struct {
	kind string
	data []byte
}

type reportCache struct {
	root host.Root
	dev  host.BlockReader
	now  func() time.Time
}

// WithReportCache makes the client keep the output of metadata-only
// reports (VGs, LVMeta, LVsMeta) in ReportCacheDir under root, checked
// against the PV's metadata area headers read through dev before each
// use. A report whose stamp cannot be read runs lvm as without the cache.
func (c *Client) WithReportCache(root host.Root, dev host.BlockReader) *Client {
	c.reports = &reportCache{root: root, dev: dev, now: time.Now}
	return c
}

// stamp is the state of every device of a scope, as read at one time.
type stamp struct {
	pvs   string // hash of the PV uuids: the cache directory of these PVs
	bytes []byte // label sector and mda headers of each device, in order
	at    time.Time
}

// read reads the stamp of every device of the scope, giving up after
// timeout (or when ctx ends). A device whose paths are all down may queue
// I/O for as long as its transport's loss timeout, and a read(2) cannot
// be interrupted: the read goes on in its goroutine, and the caller runs
// lvm under its own deadline, as without the cache.
func (rc *reportCache) read(ctx context.Context, devs []string, timeout time.Duration) (stamp, error) {
	type result struct {
		st  stamp
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := rc.readNow(devs)
		done <- result{st, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.st, r.err
	case <-t.C:
		return stamp{}, fmt.Errorf("reading the metadata area headers of %v took more than %s", devs, timeout)
	case <-ctx.Done():
		return stamp{}, ctx.Err()
	}
}

// readNow reads the stamp. The devices are usually one device under two
// names (the stable path and the kernel name it resolves to): each device
// is read once, so that the stamp covers whatever LVM may scan at the
// cost of one read (a dd child) per device, not per name.
func (rc *reportCache) readNow(devs []string) (stamp, error) {
	st := stamp{at: rc.now()}
	var ids []string
	seen := map[string]bool{}
	for _, d := range devs {
		node, err := rc.root.EvalSymlinks(d)
		if err != nil {
			node = d
		}
		if seen[node] {
			continue
		}
		seen[node] = true
		id, b, err := deviceStamp(rc.dev, d)
		if err != nil {
			return stamp{}, err
		}
		ids = append(ids, id)
		st.bytes = binary.AppendUvarint(st.bytes, uint64(len(b)))
		st.bytes = append(st.bytes, b...)
	}
	st.pvs = hashHex(strings.Join(ids, "\x00"), 16)
	return st, nil
}

func hashHex(s string, n int) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:n]
}

func (rc *reportCache) dir(st stamp) string {
	return path.Join(ReportCacheDir, st.pvs, hashHex(string(st.bytes), 32))
}

// encodeEntry lays out an entry: the magic, then the key, the stamp, the
// kind and the data, each preceded by its length.
func encodeEntry(key string, st stamp, e entry) []byte {
	b := []byte(reportCacheMagic)
	for _, f := range [][]byte{[]byte(key), st.bytes, []byte(e.kind), e.data} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// decodeEntry returns the fields encodeEntry wrote: key, stamp, kind,
// data.
func decodeEntry(b []byte) ([4][]byte, error) {
	var fs [4][]byte
	if !bytes.HasPrefix(b, []byte(reportCacheMagic)) {
		return fs, errors.New("not a report cache entry")
	}
	b = b[len(reportCacheMagic):]
	for i := range fs {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return fs, errors.New("truncated report cache entry")
		}
		fs[i], b = b[k:k+int(n)], b[k+int(n):]
	}
	if len(b) != 0 {
		return fs, errors.New("trailing bytes in a report cache entry")
	}
	return fs, nil
}

// get returns the answer stored for key under exactly this stamp.
func (rc *reportCache) get(key string, st stamp) (entry, bool) {
	b, err := rc.root.ReadFile(path.Join(rc.dir(st), hashHex(key, 32)))
	if err != nil {
		return entry{}, false
	}
	fs, err := decodeEntry(b)
	if err != nil || string(fs[0]) != key || !bytes.Equal(fs[1], st.bytes) {
		return entry{}, false
	}
	return entry{kind: string(fs[2]), data: fs[3]}, true
}

// put stores a report read under st, then removes the entries of older
// stamps of the same PVs: a header never returns to an earlier state, so
// they can never be used again. Only directories last written before st
// was read go: a newer stamp's, written by a call that read the headers
// after st was read, stays. Failures only cost a later miss.
func (rc *reportCache) put(key string, st stamp, e entry) error {
	dir := rc.dir(st)
	if err := rc.root.WriteFileAtomic(path.Join(dir, hashHex(key, 32)), encodeEntry(key, st, e), 0o600); err != nil {
		return err
	}
	pvDir := path.Dir(dir)
	ents, err := rc.root.ReadDir(pvDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := path.Join(pvDir, e.Name())
		if p == dir {
			continue
		}
		if info, err := e.Info(); err != nil || !info.ModTime().Before(st.at) {
			continue
		}
		if err := rc.removeDir(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeDir removes a stamp directory and its entries (files only).
func (rc *reportCache) removeDir(dir string) error {
	ents, err := rc.root.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := rc.root.Remove(path.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	if err := rc.root.Remove(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}
