package host

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// PoolConf is where xapi records this host's role in the pool.
const PoolConf = "/etc/xensource/pool.conf"

// Role is this host's role in the pool.
type Role struct {
	Master bool
	// MasterAddr is the master's address when this host is a member.
	MasterAddr string
}

// String describes the role for messages.
func (r Role) String() string {
	if r.Master {
		return "pool master"
	}
	return "pool member (master " + r.MasterAddr + ")"
}

// ReadRole reads the pool role. A host without pool.conf is treated as a
// master: that is a stand-alone host (or the lab), where nobody else can
// write the VG metadata.
func ReadRole(root Root) (Role, error) {
	s, err := root.ReadString(PoolConf)
	if errors.Is(err, fs.ErrNotExist) {
		return Role{Master: true}, nil
	}
	if err != nil {
		return Role{}, fmt.Errorf("read %s: %w", PoolConf, err)
	}
	switch {
	case s == "master":
		return Role{Master: true}, nil
	case strings.HasPrefix(s, "slave:"):
		return Role{MasterAddr: strings.TrimPrefix(s, "slave:")}, nil
	default:
		return Role{}, fmt.Errorf("%s holds %q, expected \"master\" or \"slave:<address>\"", PoolConf, s)
	}
}
