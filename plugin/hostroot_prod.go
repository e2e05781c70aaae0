//go:build !sanvoltest

package plugin

// hostRootDir is the directory the binary sees as the host's "/".
func hostRootDir() string { return "/" }
