package plugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
)

// The guard the engine's LVM client asks before each metadata change: it
// reads pool.conf again, so a master change mid-call stops the old
// master's next write.
func TestStillMasterReadsPoolConfEachTime(t *testing.T) {
	root := host.NewRoot(t.TempDir())
	if err := root.MkdirAll("/etc/xensource", 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		t.Helper()
		if err := root.WriteFile(host.PoolConf, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("master")
	if err := stillMaster(root); err != nil {
		t.Fatalf("master: %v", err)
	}
	write("slave:10.0.0.2")
	err := stillMaster(root)
	if !errors.Is(err, host.ErrNotMaster) || !strings.Contains(err.Error(), "10.0.0.2") {
		t.Fatalf("after the change: %v", err)
	}
	write("garbage")
	if err := stillMaster(root); !errors.Is(err, host.ErrNotMaster) {
		t.Fatalf("unreadable role: %v", err)
	}
}
