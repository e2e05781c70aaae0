package conformance

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/sanvol/sanvol/plugin"
)

// pythonFloor is the least a Python 3 SMAPIv3 plugin does: start the
// interpreter, import json and sys, answer Plugin.Query. Real Python
// plugins import far more, so this is a floor, not their cost.
const pythonFloor = `#!/usr/bin/python3
import json
import sys

json.loads(sys.stdin.read())
print(json.dumps({"plugin": "floor", "name": "", "description": "", "vendor": "",
                  "copyright": "", "version": "", "required_api_version": "5.0",
                  "features": [], "configuration": {}, "required_cluster_stack": []}))
`

// benchCalls forks the script b.N times as the daemon does and reports
// the median wall time per call; run with -benchtime=200x for the
// 200-call medians recorded in docs/benchmarks.md.
func benchCalls(b *testing.B, script string, stdin []byte) {
	samples := make([]time.Duration, 0, b.N)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, err := plugin.Run(ctx, script, stdin)
		if err != nil {
			b.Fatal(err)
		}
		samples = append(samples, out.Elapsed)
	}
	b.StopTimer()
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	b.ReportMetric(float64(samples[len(samples)/2].Microseconds()), "median-µs/call")
}

func BenchmarkPluginQuery(b *testing.B) {
	dir := pluginDir(filepath.Join("volume", plugin.VolumePrefix+plugin.TypeNVMeTCP))
	benchCalls(b, filepath.Join(dir, "Plugin.Query"), []byte(requests["Plugin.Query"]))
}

// BenchmarkVolumeStatShape measures a Volume.stat-shaped call: the same
// fork, argument decoding and answer, on an SR that is not attached here
// (the lab measures Volume.stat against real LVM).
func BenchmarkVolumeStatShape(b *testing.B) {
	dir := pluginDir(filepath.Join("volume", plugin.VolumePrefix+plugin.TypeNVMeTCP))
	benchCalls(b, filepath.Join(dir, "Volume.stat"), []byte(requests["Volume.stat"]))
}

func BenchmarkPythonFloorQuery(b *testing.B) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		b.Skip("no /usr/bin/python3")
	}
	p := filepath.Join(b.TempDir(), "Plugin.Query")
	if err := os.WriteFile(p, []byte(pythonFloor), 0o755); err != nil {
		b.Fatal(err)
	}
	benchCalls(b, p, []byte(requests["Plugin.Query"]))
}
