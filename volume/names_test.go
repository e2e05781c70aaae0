package volume

import (
	"errors"
	"strings"
	"testing"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/lvm"
)

func TestUsable(t *testing.T) {
	lv := func(f map[string]string) lvm.LV {
		return lvm.LV{Name: "v-k", Size: 8 << 20, Tags: lvm.EncodeFields(f)}
	}
	if err := Usable(lv(map[string]string{volFieldName: "disk"})); err != nil {
		t.Fatalf("a finished volume is refused: %v", err)
	}
	if err := Usable(lv(map[string]string{volFieldName: "disk", volFieldInit: "1"})); !errors.Is(err, host.ErrNotFound) {
		t.Fatalf("a volume still being created: %v", err)
	}
	err := Usable(lv(map[string]string{volFieldName: "disk", volFieldGrow: "4194304"}))
	if !errors.Is(err, host.ErrBusy) {
		t.Fatalf("an unfinished resize: %v", err)
	}
	if want := "xe vdi-resize"; !strings.Contains(err.Error(), want) {
		t.Fatalf("the error does not give the fix: %v", err)
	}
}
