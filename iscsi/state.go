package iscsi

import (
	"encoding/json"

	"go.uber.org/zap"
)

// stateDir keeps, per attached LUN, the sessions its SR.attach planned. It
// is under /run because sessions do not survive a reboot either.
const stateDir = "/run/sanvol/iscsi"

// attachState is the record of the paths an SR.attach planned: Detach and
// Health read it to know which sessions are the SR's.
type attachState struct {
	WWID  string `json:"wwid"`
	Paths []path `json:"paths"`
}

func statePath(wwid string) string {
	return stateDir + "/" + lockNameRE.ReplaceAllString(wwid, "_") + ".json"
}

func (t *Transport) saveState(c *Config, paths []path) error {
	b, err := json.Marshal(attachState{WWID: c.WWID, Paths: paths})
	if err != nil {
		return err
	}
	return t.root.WriteFileAtomic(statePath(c.WWID), b, 0o644)
}

func (t *Transport) loadState(wwid string) ([]path, bool) {
	b, err := t.root.ReadFile(statePath(wwid))
	if err != nil {
		return nil, false
	}
	var s attachState
	if err := json.Unmarshal(b, &s); err != nil || s.WWID != wwid || len(s.Paths) == 0 {
		return nil, false
	}
	return s.Paths, true
}

func (t *Transport) removeState(wwid string) {
	if err := t.root.Remove(statePath(wwid)); err != nil {
		t.log.Debug("cannot remove attach record", zap.Error(err))
	}
}
