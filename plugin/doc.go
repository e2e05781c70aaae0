// Package plugin is sanvol's front door: everything between a process
// start and the engine. It resolves which method file or admin command
// the binary was started as, reads and validates the xapi-storage request
// (--json on stdin, or positional arguments), wires the real host boundary
// (exec, the / root, XenAPI, syslog logging) into the volume, datapath
// and transport packages, calls them, and turns their typed errors into
// the error documents xapi-storage-script expects. It also holds the
// admin CLI (`sanvol install`, `uninstall`, `doctor`, `status`, `probe`,
// `call`, `log-level`)
// and the installer that lays out the plugin directories.
//
// Only this package writes to stdout (the JSON answer), and only this
// package turns a host.Error into an error document.
package plugin
