package plugin

// TestRootEnv names the variable a test build (tag sanvoltest) reads for
// its host root, so tests/conformance never touches the machine's /run,
// /etc, /sys or kernel modules. The shipped binary is built without the
// tag and ignores it: nothing a daemon passes can move its root.
const TestRootEnv = "SANVOL_TEST_ROOT"
