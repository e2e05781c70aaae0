package plugin

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sanvol/sanvol/host"
)

// ConfigPath is the host's sanvol settings file. Every process reads it
// once at start (one open, no daemon to signal), so a change applies to the
// next method call xapi-storage-script forks, without restarting xapi.
const ConfigPath = "/etc/sanvol/sanvol.conf"

// Log levels accepted in ConfigPath and by `sanvol log-level`.
const (
	LogInfo  = "info"
	LogDebug = "debug"
)

// readConfig returns ConfigPath's key=value settings (comments and blank
// lines skipped); a missing or unreadable file is no settings: a broken
// settings file must never stop a storage call.
func readConfig(root host.Root) map[string]string {
	out := map[string]string{}
	b, err := root.ReadFile(ConfigPath)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// ReadLogLevel returns the level set in ConfigPath ("log-level=debug"),
// info when the file or the key is missing or unreadable.
func ReadLogLevel(root host.Root) string {
	if readConfig(root)["log-level"] == LogDebug {
		return LogDebug
	}
	return LogInfo
}

// SnapshotMemoryWarnOnly reports whether ConfigPath says
// "snapshot-memory-check=warn": a snapshot whose overlay could outgrow
// dom0's memory is then taken with a warning instead of refused
// (docs/snapshots.md). Anything else keeps the refusal.
func SnapshotMemoryWarnOnly(root host.Root) bool {
	return readConfig(root)["snapshot-memory-check"] == "warn"
}

// WriteLogLevel records the level in ConfigPath, atomically so that a
// call starting meanwhile reads the old or the new setting. The file's
// other lines stay as they are.
func WriteLogLevel(root host.Root, level string) error {
	if level != LogInfo && level != LogDebug {
		return fmt.Errorf("log level %q: expected %s or %s", level, LogInfo, LogDebug)
	}
	var lines []string
	if b, err := root.ReadFile(ConfigPath); err == nil {
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			k, _, ok := strings.Cut(strings.TrimSpace(line), "=")
			if ok && strings.TrimSpace(k) == "log-level" || strings.HasPrefix(line, "# Written by `sanvol log-level`") ||
				strings.HasPrefix(line, "# debug sends every command line") {
				continue
			}
			lines = append(lines, line)
		}
	}
	content := "# Written by `sanvol log-level`; read by every sanvol process at start.\n" +
		"# debug sends every command line (secrets redacted) and its outcome to syslog.\n" +
		"log-level=" + level + "\n"
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			content += l + "\n"
		}
	}
	if err := root.WriteFileAtomic(ConfigPath, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write %s: %w (run as root)", ConfigPath, err)
	}
	return nil
}

func logLevelCmd(deps *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "log-level [info|debug]",
		Short: "Show or set the syslog level of every sanvol process on this host",
		Long: `With no argument, prints the level in force. With one, writes it to
` + ConfigPath + `; every method call xapi-storage-script forks afterwards reads
it at start, so no toolstack restart is needed. At debug, every command line
sanvol runs (secrets replaced by ***) reaches syslog with its exit status and
duration; set it back to info when done.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), ReadLogLevel(deps.Root))
				return nil
			}
			if err := WriteLogLevel(deps.Root, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "log-level %s written to %s\n", args[0], ConfigPath)
			return nil
		},
	}
}
