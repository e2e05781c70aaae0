package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// CLI builds the admin command line, used when the binary runs under its
// own name.
func CLI(deps *Deps, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "sanvol",
		Short:         "sanvol: shared SAN storage repositories (NVMe/TCP, iSCSI) for XCP-ng",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(versionCmd(deps), installCmd(), uninstallCmd(), callCmd(), probeCmd(deps), doctorCmd(deps), statusCmd(deps), logLevelCmd(deps))
	return root
}

func versionCmd(deps *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the sanvol version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "sanvol %s\n", deps.Version)
			return nil
		},
	}
}

func installCmd() *cobra.Command {
	var o InstallOptions
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the plugin directories under <root>/usr/libexec/xapi-storage-script",
		Long: `Installs the binary as /usr/libexec/sanvol/sanvol and the plugin directories
volume/org.xen.xapi.storage.nvmetcp, volume/org.xen.xapi.storage.iscsi-ng and
datapath/sanvol, every method file a symlink to the binary (or, with
--observer-shims, a Python 3 file that execs it). Each directory is built
aside and renamed into place, so xapi-storage-script registers it whole.
Running it again changes nothing. Afterwards run xe-toolstack-restart so that
xapi creates the SM records (xe sm-list).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := Install(o)
			if err != nil {
				return err
			}
			for _, p := range rep.Changed {
				fmt.Fprintf(cmd.OutOrStdout(), "installed %s\n", p)
			}
			for _, p := range rep.Kept {
				fmt.Fprintf(cmd.OutOrStdout(), "unchanged %s\n", p)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Root, "root", "/", "install root (DESTDIR)")
	cmd.Flags().StringVar(&o.Binary, "binary", "", "binary to install (default: this one)")
	cmd.Flags().BoolVar(&o.ObserverShims, "observer-shims", false, "write Python 3 shims instead of symlinks (hosts with SMAPI tracing on)")
	cmd.Flags().StringVar(&o.ShimTarget, "shim-target", BinaryPath, "binary path the shims exec")
	return cmd
}

func uninstallCmd() *cobra.Command {
	var root string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the plugin directories and the binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			removed, err := Uninstall(root)
			for _, p := range removed {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", p)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "install root (DESTDIR)")
	return cmd
}

func callCmd() *cobra.Command {
	var (
		root     string
		argPairs []string
		jsonFile string
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "call <plugin-dir> <Method>",
		Short: "Invoke an installed method file exactly as xapi-storage-script does",
		Long: `Runs <plugin-dir>/<Method> --json with the arguments as one JSON object on
stdin, then prints the result, or the error document decoded.

<plugin-dir> is a path, or one of nvmetcp, iscsi-ng, sanvol (the datapath).
Arguments: --arg k=v passes a string; --arg k:=JSON passes any JSON value
(numbers, booleans, objects), e.g.
  sanvol call nvmetcp SR.probe --arg 'configuration:={"target":"10.0.0.5","nqn":"nqn.2014-08.org.example:sub1"}'
  sanvol call nvmetcp Volume.create --arg sr=nvmetcp://<uuid> --arg name=disk0 \
      --arg description= --arg size:=10737418240 --arg sharable:=false
"dbg" defaults to "sanvol-call".`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, pos []string) error {
			args := map[string]json.RawMessage{}
			if jsonFile != "" {
				b, err := os.ReadFile(jsonFile)
				if err != nil {
					return err
				}
				if err := json.Unmarshal(b, &args); err != nil {
					return fmt.Errorf("--json-args %s: not a JSON object: %w", jsonFile, err)
				}
			}
			for _, kv := range argPairs {
				if k, v, ok := strings.Cut(kv, ":="); ok && !strings.Contains(k, "=") {
					if !json.Valid([]byte(v)) {
						return fmt.Errorf("--arg %s: %q is not valid JSON", k, v)
					}
					args[k] = json.RawMessage(v)
					continue
				}
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--arg %q: expected k=v or k:=JSON", kv)
				}
				s, _ := json.Marshal(v)
				args[k] = s
			}
			if _, ok := args["dbg"]; !ok {
				args["dbg"] = json.RawMessage(`"sanvol-call"`)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			dir := ResolvePluginDir(root, pos[0])
			var res json.RawMessage
			err := Invoke(ctx, dir, pos[1], args, &res)
			if err != nil {
				if ce, ok := err.(*CallError); ok {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s failed with exit status %d:\n", pos[1], ce.ExitCode)
					enc := json.NewEncoder(cmd.ErrOrStderr())
					enc.SetEscapeHTML(false)
					enc.SetIndent("", "  ")
					_ = enc.Encode(ce.Doc)
					if ce.Stderr != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "stderr:\n%s", ce.Stderr)
					}
					return fmt.Errorf("%s: %s", ce.Doc.Code, strings.Join(ce.Doc.Params, ": "))
				}
				return err
			}
			var v any
			if err := json.Unmarshal(res, &v); err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "install root where the plugin directories live")
	cmd.Flags().StringArrayVar(&argPairs, "arg", nil, "argument k=v (string) or k:=JSON")
	cmd.Flags().StringVar(&jsonFile, "json-args", "", "file holding the arguments object")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	return cmd
}

const defaultCLITimeout = 5 * time.Minute

func contextWithTimeout(cmd *cobra.Command, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), d)
}
