// Command sanvol is the multi-call binary behind every method file of the
// sanvol volume and datapath plugins, and the admin CLI.
package main

import (
	"os"

	"github.com/sanvol/sanvol/plugin"
)

// version is stamped at link time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(plugin.Main(version, os.Args, os.Stdin, os.Stdout, os.Stderr))
}
