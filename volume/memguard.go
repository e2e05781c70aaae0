package volume

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/sanvol/sanvol/host"
)

// dom0 memory of a snapshot overlay (docs/snapshots.md "Limits"). The
// kernel's snapshot target (drivers/md/dm-snap.c) keeps in RAM, per
// loaded overlay:
//
//   - one struct dm_exception per chunk of the origin copied to the COW
//     (an hlist_bl_node and two chunk numbers: 32 bytes on 64-bit),
//     allocated GFP_NOIO when the chunk is first written, or read from
//     the COW at load; if the allocation fails the overlay goes Invalid
//     and the VM's I/O fails. A COW holds each chunk of the origin at
//     most once, so a VDI of N bytes needs at most N/8 KiB of them
//     (sanvol's chunk is 16 sectors: blockdev.Snapshot). Runs written in
//     order fold into one entry, which only lowers the count.
//   - the completed-exception hash table, sized by init_hash_tables at
//     one 8-byte bucket (struct hlist_bl_head) per chunk of the COW
//     (older kernels: of the smaller of origin and COW), at least 64,
//     capped by calc_max_buckets at 2 MiB and rounded down to a power of
//     two; and the pending table for writes in flight, an eighth of it
//     (at least 64 buckets).
//
// Measured in the lab (docs/benchmarks.md, TestSnapshotBench): 0.98 to
// 1.0 entries per chunk with every chunk rewritten in an order the
// kernel cannot fold, 4.0 MiB per GiB.
const (
	snapChunkBytes     = 8 << 10
	snapExceptionBytes = 32
	snapBucketBytes    = 8
	snapMaxHashBytes   = 2 << 20
	snapMinBuckets     = 64
)

// OverlayTableBytes is the most dom0 memory the kernel's table of one
// overlay can take: a VDI of size bytes over a COW of cow bytes, every
// chunk of the VDI rewritten while the snapshot lives. It is an upper
// bound: the power-of-two rounding of the hash table is left out.
func OverlayTableBytes(size, cow int64) int64 {
	chunks := (size + snapChunkBytes - 1) / snapChunkBytes
	buckets := min(max(cow/snapChunkBytes, snapMinBuckets), snapMaxHashBytes/snapBucketBytes)
	pending := max(buckets/8, snapMinBuckets)
	return chunks*snapExceptionBytes + (buckets+pending)*snapBucketBytes
}

// cowBytes is the size of the COW sanvol makes for a VDI of size bytes
// (cowExtents) without the rounding up to an extent: what a host that
// does not read the COW's LV uses. One extent more changes the hash
// table by at most a few KiB.
func cowBytes(size int64) int64 { return size + size/256 + cowHeaderBytes }

// Meminfo is dom0's memory as /proc/meminfo reports it, in bytes.
type Meminfo struct {
	Total, Available int64
}

// meminfoPath is the kernel's memory report (Documentation/filesystems/
// proc.rst, "meminfo"); MemAvailable is there since Linux 3.14.
const meminfoPath = "/proc/meminfo"

// ReadMeminfo reads dom0's MemTotal and MemAvailable.
func ReadMeminfo(r host.Root) (Meminfo, error) {
	b, err := r.ReadFile(meminfoPath)
	if err != nil {
		return Meminfo{}, err
	}
	return ParseMeminfo(b)
}

// ParseMeminfo reads MemTotal and MemAvailable from /proc/meminfo's
// text ("MemTotal:       24683748 kB").
func ParseMeminfo(b []byte) (Meminfo, error) {
	var m Meminfo
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "MemTotal" && name != "MemAvailable") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("%s: %s %q is not a size in kB", meminfoPath, name, rest)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return m, fmt.Errorf("%s: %s %q is not a size in kB", meminfoPath, name, rest)
		}
		if name == "MemTotal" {
			m.Total = n << 10
		} else {
			m.Available = n << 10
		}
		seen++
	}
	if seen != 2 {
		return m, fmt.Errorf("%s has no MemTotal or no MemAvailable (a kernel older than 3.14?)", meminfoPath)
	}
	return m, nil
}

// dom0Reserve is the part of dom0's memory an overlay's worst case may
// not plan to use: an eighth of dom0, at least 128 MiB. MemAvailable
// counts page cache and reclaimable slab that dom0's own programs (xapi,
// the disk and network back-ends, a qemu per HVM guest) take back as
// they run, and the overlay's table only grows after the check; the
// margin keeps a snapshot from counting on dom0's last free memory. It
// is a fraction because dom0's needs grow with the host it runs (XCP-ng
// sizes dom0 from the host's RAM), with a floor for a small dom0.
func dom0Reserve(total int64) int64 { return max(total/8, 128<<20) }

// overlayFits reports whether dom0 can take an overlay table of need
// bytes and keep its reserve.
func overlayFits(need int64, m Meminfo) bool { return need <= m.Available-dom0Reserve(m.Total) }

// dom0Suggestion is the smallest dom0 (MemTotal, rounded up to 256 MiB)
// that fits need with the reserve, given that each MiB added to dom0 is
// one more MiB available.
func dom0Suggestion(need int64, m Meminfo) int64 {
	const step = 256 << 20
	n := (m.Total + step - 1) / step * step
	for !overlayFits(need, Meminfo{Total: n, Available: m.Available + n - m.Total}) {
		n += step
	}
	return n
}

func mibs(n int64) int64 { return (n + mib - 1) / mib }

// CheckOverlayMemory refuses a new overlay of volume key (a VDI of size
// bytes over a COW of cow bytes) on a host whose dom0 has less memory
// available than the overlay's worst case plus dom0Reserve: the kernel
// would stop the overlay as Invalid, failing the VM's disk, once the
// table outgrows dom0.
func CheckOverlayMemory(op, key string, size, cow int64, m Meminfo) error {
	need := OverlayTableBytes(size, cow)
	if overlayFits(need, m) {
		return nil
	}
	return host.NewError(host.KindNoSpace, op,
		fmt.Sprintf("not enough dom0 memory for the snapshot's overlay: volume %s is a VDI of %d MiB, whose overlay table can take up to %d MiB of dom0 RAM (4 MiB per GiB when every chunk is rewritten while the snapshot lives); dom0 has %d MiB available, of which sanvol leaves %d MiB to dom0 itself",
			key, mibs(size), mibs(need), m.Available/mib, mibs(dom0Reserve(m.Total))),
		fmt.Sprintf("give dom0 more memory (XCP-ng: /opt/xensource/libexec/xen-cmdline --set-xen dom0_mem=%dM,max:%dM, then reboot the host), or snapshot a smaller VDI, or delete snapshots of VDIs whose VMs run on the same host, to free their tables",
			dom0Suggestion(need, m)/mib, dom0Suggestion(need, m)/mib), nil)
}

// checkOverlayHere is CheckOverlayMemory with this host's /proc/meminfo.
// A dom0 whose memory cannot be read is let through with a warning: the
// check guards against a measured risk, and a host without MemAvailable
// is not one sanvol supports as dom0.
func (st *Stack) checkOverlayHere(op, key string, size, cow int64) error {
	m, err := ReadMeminfo(st.Root)
	if err != nil {
		st.log().Warn("cannot read dom0's memory; the snapshot goes on without the memory check", zap.String("key", key), zap.Error(err))
		return nil
	}
	err = CheckOverlayMemory(op, key, size, cow, m)
	if err != nil && st.MemoryWarnOnly {
		st.log().Warn("the snapshot's overlay could outgrow dom0's memory; going on (snapshot-memory-check=warn)", zap.String("key", key), zap.Error(err))
		return nil
	}
	return err
}

// guardNewOverlay is the host plugin's memory check before K's stack
// here switches to the new overlay rc's intent names (Engine.Snapshot
// asks for it: RemoteChain.CheckMemory). A COW already active here was
// let through by an earlier call, which loaded it: not checked again.
func (st *Stack) guardNewOverlay(ctx context.Context, w where, c Chain, sectors uint64) error {
	if c.Intent == nil || c.Intent.Op != IntentSnap {
		return nil
	}
	l, err := st.LVM.LV(ctx, w.scope, w.vg, cowName(c.Intent.Snap))
	if err != nil || l.Active() {
		return err
	}
	return st.checkOverlayHere("snapshot of volume "+c.Key, c.Key, int64(sectors)*512, l.Size)
}

// warnOverlayMemory is Datapath.activate's look at dom0's memory before
// it loads overlays of volume key on this host (there is no refusing
// then: the VM is starting): n overlays of a VDI of size bytes over COWs
// of cow bytes. Overlays already loaded here are in MemAvailable, so
// only a device that is absent or a placeholder counts.
func (st *Stack) warnOverlayMemory(ctx context.Context, sr, key string, n int, size, cow int64) {
	if n == 0 {
		return
	}
	if info, err := st.DM.Info(ctx, DevName(sr, key)); err != nil {
		return
	} else if info.Exists {
		t, err := st.DM.Table(ctx, DevName(sr, key))
		if err != nil || !isPlaceholder(t) {
			return
		}
	}
	m, err := ReadMeminfo(st.Root)
	if err != nil {
		st.log().Warn("cannot read dom0's memory to check the snapshot overlays about to load", zap.String("key", key), zap.Error(err))
		return
	}
	need := int64(n) * OverlayTableBytes(size, cow)
	if overlayFits(need, m) {
		return
	}
	st.log().Warn("dom0 may run out of memory for this volume's snapshot overlays: if it does, the kernel stops an overlay as Invalid and the VM's disk fails; give dom0 more memory or delete the volume's snapshots",
		zap.String("key", key), zap.Int64("vdi_mib", mibs(size)), zap.Int("overlays", n),
		zap.Int64("worst_case_mib", mibs(need)), zap.Int64("available_mib", m.Available/mib), zap.Int64("reserve_mib", mibs(dom0Reserve(m.Total))))
}
