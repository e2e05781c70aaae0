//go:build sanvoltest

package plugin

import "os"

// TestRootEnv names the variable a test build (tag sanvoltest) reads for
// its host root, so tests/conformance never touches the machine's /run,
// /etc or kernel modules. The shipped binary is built without the tag.
const TestRootEnv = "SANVOL_TEST_ROOT"

func hostRootDir() string {
	if d := os.Getenv(TestRootEnv); d != "" {
		return d
	}
	return "/"
}
