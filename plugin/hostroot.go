//go:build !sanvoltest

package plugin

// hostRootDir is the directory the binary sees as the host's "/". Only a
// test build (tag sanvoltest, tests/conformance) can move it: the shipped
// binary has no flag nor variable that points it elsewhere.
func hostRootDir() string { return "/" }
