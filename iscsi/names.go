package iscsi

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// maxIQNBytes is the limit of RFC 3720 §3.2.6.1 on an iSCSI name.
const maxIQNBytes = 223

// iqnRE follows RFC 3720 §3.2.6.3 and RFC 3722: "iqn." with a date and
// a naming authority, "eui." with an EUI-64, "naa." with a 64- or 128-bit
// NAA identifier. The characters after "iqn." are those stringprep
// leaves in a name (letters, digits, '-', '.', ':'); upper case is
// accepted because stringprep folds it and some arrays print it. No '/',
// so an IQN can never leave the directory iscsiadm keeps the node
// records in (/etc/iscsi/nodes/<iqn>/…), and no blank, ',' or '=' that a
// command line or a record line would read as a separator.
var iqnRE = regexp.MustCompile(`^(iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9][A-Za-z0-9.:-]*|eui\.[0-9A-Fa-f]{16}|naa\.([0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))$`)

// checkIQN says why s is not an iSCSI name, or nil.
func checkIQN(s string) error {
	switch {
	case len(s) > maxIQNBytes:
		return fmt.Errorf("is %d bytes long, more than the %d of RFC 3720", len(s), maxIQNBytes)
	case !iqnRE.MatchString(s):
		return fmt.Errorf("is %q, not an iSCSI name (RFC 3720: iqn.YYYY-MM.reversed.domain[:name], eui.<16 hex digits> or naa.<16 or 32 hex digits>; letters, digits, '-', '.' and ':' only)", s)
	}
	return nil
}

// maxCHAPBytes is what open-iscsi keeps of a CHAP user name or secret:
// AUTH_STR_MAX_LEN (256, usr/auth.h) with its terminating NUL; a longer
// value is cut silently by strlcpy in idbm_rec_update_param.
const maxCHAPBytes = 255

// checkCHAPValue says why a CHAP user name or secret cannot travel in an
// iscsiadm record, without echoing the value. The record is a text file
// of "name = value" lines read by idbm_recinfo_config (usr/idbm.c): a
// newline starts a new setting (a secret "x\nnode.startup = automatic"
// would set another key), the line is stripped of blanks at both ends
// (a secret with a leading or trailing blank would change), and lines
// over 2047 bytes are skipped.
func checkCHAPValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("is empty")
	case len(v) > maxCHAPBytes:
		return fmt.Errorf("is %d bytes long; open-iscsi keeps at most %d", len(v), maxCHAPBytes)
	case !utf8.ValidString(v):
		return fmt.Errorf("is not valid UTF-8")
	case strings.TrimSpace(v) != v:
		return fmt.Errorf("starts or ends with a blank, which iscsiadm's record parser strips")
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("contains a control character (newline, tab or similar), which would break iscsiadm's node record into other settings")
		}
	}
	return nil
}
