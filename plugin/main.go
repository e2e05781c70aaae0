package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Main is the whole program: a method call when argv[0] is a method file
// in a plugin directory, a XenAPI host plugin call when it is
// /etc/xapi.d/plugins/sanvol (hostplugin.go), the admin CLI when the
// binary runs under its own name elsewhere. It returns the exit code.
func Main(version string, argv []string, stdin io.Reader, stdout, stderr io.Writer) int {
	deps := NewDeps(version, stderr)
	defer deps.Log.Sync() //nolint:errcheck // nothing useful to do on a failed flush
	ctx := context.Background()
	if IsHostPlugin(argv) {
		return ServeHostPlugin(ctx, argv, stdout, deps)
	}
	if strings.EqualFold(filepath.Base(argv[0]), "sanvol") {
		cli := CLI(deps, stdout, stderr)
		cli.SetArgs(argv[1:])
		cli.SetIn(stdin)
		if err := cli.ExecuteContext(ctx); err != nil {
			var code ExitCodeError
			if errors.As(err, &code) {
				return int(code)
			}
			fmt.Fprintln(stderr, "sanvol:", err)
			return 3
		}
		return 0
	}
	return Serve(ctx, argv, stdin, stdout, stderr, deps)
}
