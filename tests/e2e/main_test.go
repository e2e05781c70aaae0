//go:build lab

// Package e2e holds the end-to-end scenarios. They run inside the lab
// guest (tests/lab/run.sh boots it), as root, against real kernel targets
// and initiators; on any other machine they refuse to run.
//
// Shared helpers live in this file: where the lab keeps things, how to
// install the freshly built sanvol, running commands, waiting for
// conditions, and an O_DIRECT writer that proves I/O survives a path cut.
package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sanvol/sanvol/tests/labtarget"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// run.sh lists the scenarios on the host to split them between guests;
	// listing runs nothing, so it needs no lab.
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run())
	}
	// A helper process a scenario starts (and kills) must not clean the
	// targets of the scenario that started it.
	if os.Getenv(snapHelperEnv) != "" {
		os.Exit(m.Run())
	}
	if os.Getenv("SANVOL_LAB") != "1" {
		fmt.Println("e2e: these tests run only inside the lab guest; use tests/lab/run.sh test")
		os.Exit(0)
	}
	// The pool lab's member runs its agent, not scenarios (pool_agent_test.go).
	if os.Getenv("SANVOL_LAB_POOL_AGENT") == "1" {
		os.Exit(runPoolAgent())
	}
	// A previous binary in this boot may have died half-way; the next
	// scenario must not inherit its targets.
	if err := labtarget.CleanNVMet(); err != nil {
		fmt.Println("e2e: cleaning nvmet:", err)
	}
	if err := labtarget.CleanLIO(); err != nil {
		fmt.Println("e2e: cleaning LIO:", err)
	}
	rc := m.Run()
	if poolMaster() {
		(&member{}).quit()
	}
	os.Exit(rc)
}

// LabDir is the 9p share with the host: the built binaries come in
// through it and the results go out through it.
func LabDir() string {
	if d := os.Getenv("SANVOL_LAB_DIR"); d != "" {
		return d
	}
	return "/lab"
}

// SrvDir is the guest tmpfs that holds target backing files.
func SrvDir() string {
	if d := os.Getenv("SANVOL_LAB_SRV"); d != "" {
		return d
	}
	return labtarget.DefaultBackingDir
}

// SanvolBinary is the sanvol built for this run, or "" if the tree had no
// cmd/sanvol to build.
func SanvolBinary() string {
	p := filepath.Join(LabDir(), "sanvol")
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
		return p
	}
	return ""
}

// installSanvol installs the guest copy of the binary into the guest's
// root exactly as an admin would on an XCP-ng host.
func installSanvol(t testing.TB) {
	t.Helper()
	bin := SanvolBinary()
	if bin == "" {
		t.Fatalf("no sanvol binary in %s: run.sh builds it from ./cmd/sanvol", LabDir())
	}
	mustRun(t, bin, "install", "--root", "/")
}

// run runs a command with the default deadline and returns its combined
// output.
func run(name string, args ...string) (string, error) {
	return labtarget.Run(context.Background(), name, args...)
}

// mustRun runs a command and fails the test if it fails.
func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mustOutput runs a command that prints a machine-readable report and
// returns its standard output alone; it fails the test if the command fails.
func mustOutput(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := labtarget.Output(context.Background(), name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes; cond returns a
// description of the current state for the failure message.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var state string
	for {
		var ok bool
		ok, state = cond()
		if ok {
			return time.Since(start)
		}
		elapsed := time.Since(start)
		if elapsed > timeout {
			t.Fatalf("waited %s for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(pollInterval(elapsed))
	}
}

// pollInterval is how long waitFor sleeps between looks: 100 ms at first,
// growing by a tenth of the time waited so far, at most 1 s. Conditions
// usually look at the system through a command or two, and under TCG every
// process costs tens of milliseconds of the guest's CPU; a long wait, like
// a recovery timeout running out, need not be watched as closely as the
// first moments.
func pollInterval(elapsed time.Duration) time.Duration {
	return min(100*time.Millisecond+elapsed/10, time.Second)
}

// readSys reads a sysfs attribute, trimmed; "" if it cannot be read.
func readSys(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// dmesgSince returns the kernel log lines after mark (a line count from an
// earlier call with mark 0) and the new mark.
func dmesgSince(mark int) ([]string, int) {
	out, err := labtarget.Output(context.Background(), "dmesg")
	if err != nil {
		return nil, mark
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if mark > len(lines) {
		mark = 0 // the ring buffer wrapped
	}
	return lines[mark:], len(lines)
}

// ioChunk is the slot of the span each IOLoad write owns: write c goes
// to offset c*ioChunk. A pattern writer fills its slot; see flowChunk.
const ioChunk = 1 << 20

// flowChunk is how much of its slot a flow writer (StartIO) writes: the
// writers whose point is that I/O keeps flowing and nothing is lost
// across a path cut, failover or portal move. 64 KiB keeps what those
// checks see: the same offsets, writes a second, passes and rewrite
// period as whole 1 MiB chunks (so a stale write replayed after a
// failover still lands on data written later, and Verify sees it), every
// 512-byte sector's words unique to (pass, chunk, offset), and the writes
// issued after a cut still meet the dead path until the host fails it.
// It drops 15/16 of the bytes: filling, copying through initiator,
// loopback TCP and target, reading back and comparing them, which under
// TCG was most of what a writer cost the guest.
const flowChunk = 64 << 10

// ioInterval paces IOLoad at 10 writes a second. Unpaced, the
// writer ran at about 100 MiB/s through initiator and target in the one
// emulated guest and kept a host core busy by itself; at 20 a second the
// writers and the kernel's I/O path for them (initiator, target, the
// loopback network) still took about a sixth of a guest's CPU, which the
// lab's wall time pays for on two cores. 10 a second still keeps a write
// in flight when a path goes, which is what the scenarios need, and the
// latency of each write is measured all the same.
// ioErrorPause keeps a writer whose writes fail at once (path-loss-policy
// fail) from spinning: it still sees every second's failures.
const (
	ioInterval   = 100 * time.Millisecond
	ioErrorPause = 100 * time.Millisecond
)

// IOLoad writes O_DIRECT chunks round and round a region of a block
// device until stopped, recording errors and the worst chunk latency, so a
// scenario can cut a path underneath it and then prove nothing was lost.
// Chunk c is the first size bytes of the span's MiB c, holding fillChunk's
// pattern of the pass that wrote it.
type IOLoad struct {
	dev     string
	f       *os.File
	buf     []byte // size bytes
	size    int    // bytes a write puts at the start of its ioChunk slot
	chunks  int
	written []uint32 // pass that last wrote each chunk, 0 = never
	stop    atomic.Bool
	done    chan struct{}

	mu         sync.Mutex
	errs       []error
	maxLatency time.Duration
	writes     int
}

// IOStats is what a finished load saw.
type IOStats struct {
	Writes     int
	Errors     []error
	MaxLatency time.Duration
}

// openDirect opens dev for O_DIRECT writes with a buffer of one ioChunk.
func openDirect(t testing.TB, dev string) (*os.File, []byte) {
	t.Helper()
	f, buf, err := openDirectErr(dev, ioChunk)
	if err != nil {
		t.Fatal(err)
	}
	return f, buf
}

func openDirectErr(dev string, size int) (*os.File, []byte, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s O_DIRECT: %w", dev, err)
	}
	// O_DIRECT needs an aligned buffer; an anonymous mapping is page aligned.
	buf, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("mmap I/O buffer: %w", err)
	}
	return f, buf, nil
}

// StartIO begins a flow writer on the first span bytes of dev: flowChunk
// bytes at the start of each MiB.
func StartIO(t testing.TB, dev string, span int64) *IOLoad {
	t.Helper()
	return startIOTest(t, dev, span, flowChunk)
}

// StartPatternIO begins a pattern writer on the first span bytes of dev:
// whole 1 MiB chunks, for the scenarios that read the span back block by
// block against fillChunk (snapshot images, merges, clones, migrations)
// and want every snapshot or merge to carry a full COW of changes.
func StartPatternIO(t testing.TB, dev string, span int64) *IOLoad {
	t.Helper()
	return startIOTest(t, dev, span, ioChunk)
}

func startIOTest(t testing.TB, dev string, span int64, size int) *IOLoad {
	t.Helper()
	l, err := startIO(dev, span, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !l.stop.Load() {
			l.Stop()
		}
	})
	return l
}

func fillChunk(buf []byte, pass uint32, chunk int) {
	seed := uint64(pass)<<40 | uint64(chunk)<<20
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], seed|uint64(i))
	}
}

func (l *IOLoad) loop() {
	defer close(l.done)
	for pass := uint32(1); ; pass++ {
		for c := 0; c < l.chunks; c++ {
			if l.stop.Load() {
				return
			}
			fillChunk(l.buf, pass, c)
			start := time.Now()
			_, err := l.f.WriteAt(l.buf, int64(c)*ioChunk)
			lat := time.Since(start)
			l.mu.Lock()
			l.writes++
			if lat > l.maxLatency {
				l.maxLatency = lat
			}
			if err != nil {
				l.errs = append(l.errs, fmt.Errorf("chunk %d pass %d after %s: %w", c, pass, lat, err))
			} else {
				l.written[c] = pass
			}
			l.mu.Unlock()
			pause := ioInterval - lat
			if err != nil {
				pause = ioErrorPause
			}
			if pause > 0 {
				time.Sleep(pause)
			}
		}
	}
}

// startIO is StartIO without a test, writing size bytes a chunk: the pool
// agent's (pool_agent_test.go).
func startIO(dev string, span int64, size int) (*IOLoad, error) {
	f, buf, err := openDirectErr(dev, size)
	if err != nil {
		return nil, err
	}
	l := &IOLoad{dev: dev, f: f, buf: buf, size: size, chunks: int(span / ioChunk), done: make(chan struct{})}
	l.written = make([]uint32, l.chunks)
	go l.loop()
	return l, nil
}

// Writes is how many chunks have been written so far.
func (l *IOLoad) Writes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

// Stop ends the load and returns its statistics.
func (l *IOLoad) Stop() IOStats {
	l.stop.Store(true)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return IOStats{Writes: l.writes, Errors: append([]error(nil), l.errs...), MaxLatency: l.maxLatency}
}

// Verify reads every chunk back with O_DIRECT and checks it holds the last
// pass written to it. Call after Stop.
func (l *IOLoad) Verify() error {
	defer func() {
		_ = syscall.Munmap(l.buf)
		l.f.Close()
	}()
	want := make([]byte, l.size)
	var bad []string
	for c, pass := range l.written {
		if pass == 0 {
			continue
		}
		if _, err := l.f.ReadAt(l.buf, int64(c)*ioChunk); err != nil {
			return fmt.Errorf("read back chunk %d of %s: %w", c, l.dev, err)
		}
		fillChunk(want, pass, c)
		if !bytes.Equal(want, l.buf) {
			bad = append(bad, fmt.Sprint(c))
		}
	}
	if len(bad) > 0 {
		return errors.New("data read back differs in chunks " + strings.Join(bad, ","))
	}
	return nil
}

// waitWrites waits until the load has made progress of n more chunks,
// proving I/O flows (e.g. over the remaining path).
func (l *IOLoad) waitWrites(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	base := l.Writes()
	waitFor(t, fmt.Sprintf("%d more writes to %s", n, l.dev), timeout, func() (bool, string) {
		w := l.Writes()
		return w >= base+n, fmt.Sprintf("%d writes", w-base)
	})
}
