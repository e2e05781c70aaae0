package plugin

import (
	"errors"
	"strings"

	"github.com/sanvol/sanvol/host"
	schema "github.com/sanvol/sanvol/xapi-storage-schema"
)

// ErrorCode is the XenAPI error code of every sanvol failure. xapi shows
// it with params, so params[0] names the kind and params[1] says what
// failed, where and the fix, as the Python bindings do.
const ErrorCode = "SR_BACKEND_FAILURE"

// activatedElsewhere is the one error xapi gives special meaning to
// (spec §3.3): exactly two params, the first this string.
const activatedElsewhere = "Activated_on_another_host"

// ActivatedOnAnotherHost asks xapi to redirect the call (a snapshot) to
// the host with that installation uuid.
type ActivatedOnAnotherHost struct{ HostUUID string }

func (e *ActivatedOnAnotherHost) Error() string {
	return "volume is active on host " + e.HostUUID
}

// ErrorDocument turns any error into the document xapi-storage-script
// requires, with every mandatory key present.
func ErrorDocument(method string, err error) schema.ErrorDoc {
	// The master's document for a call this member forwarded: unchanged.
	var fwd *ForwardedError
	if errors.As(err, &fwd) {
		return fwd.Doc
	}
	var other *ActivatedOnAnotherHost
	if errors.As(err, &other) {
		return schema.ErrorDoc{Code: ErrorCode, Params: []string{activatedElsewhere, other.HostUUID},
			Backtrace: schema.Backtrace{Error: err.Error()}}
	}
	kind := host.KindOf(err)
	msg := err.Error()
	if method != "" && !strings.HasPrefix(msg, method) {
		msg = method + ": " + msg
	}
	return schema.ErrorDoc{
		Code:      ErrorCode,
		Params:    []string{string(kind), msg},
		Backtrace: schema.Backtrace{Error: msg, Files: []string{}, Lines: []int{}},
	}
}
