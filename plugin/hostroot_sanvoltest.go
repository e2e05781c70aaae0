//go:build sanvoltest

package plugin

import "os"

// hostRootDir is TestRootEnv's directory in a test build, "/" without it.
func hostRootDir() string {
	if d := os.Getenv(TestRootEnv); d != "" {
		return d
	}
	return "/"
}
