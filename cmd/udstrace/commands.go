package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"
)

// invocation is what the command line asked for, once parsed: a trace (sub set), or something
// already served (help, version, completion, docs: sub "").
type invocation struct {
	sub  string   // run, attach, trace or top
	rest []string // run: the command; attach: PIDs given as arguments
	set  func(name string) bool
}

// errDocs marks a failure writing man pages or completions: udstrace's failure, not a usage error.
var errDocs = errors.New("writing docs")

const rootLong = `udstrace traces every allocation a process makes: libc's malloc family
(uprobes) and mmap/munmap/mremap/brk (syscall tracepoints), with user stacks,
without touching the process.

Without root: CAP_BPF+CAP_PERFMON; attach, trace and top also CAP_SYS_PTRACE;
--workload echo also CAP_SETUID+CAP_SETGID.

Stripped binaries: with DEBUGINFOD_URLS set (space-separated servers), their
debug files are fetched by build-id in the background and cached under the
--cache DIR; DEBUGINFOD_TIMEOUT (s, default 10), DEBUGINFOD_MAXTIME (s, default
120), DEBUGINFOD_MAXSIZE (bytes, default 1 GiB) and DEBUGINFOD_CACHE_PATH are
read as elfutils does.

Exit status: run -- COMMAND: the command's own (128+N if signal N killed it);
otherwise 0 traced and reported. 1 --verify found a mismatch, 2 bad command
line, 125 udstrace failed, 127 command not found.`

// newRoot builds the command tree; its commands only record what was asked in inv (the trace
// itself runs after parsing, in run), except help, version, completion and docs, served at once.
func newRoot(o *options, inv *invocation) *cobra.Command {
	var version bool
	root := &cobra.Command{
		Use:           "udstrace",
		Short:         "trace every allocation a process makes, with stacks",
		Long:          rootLong,
		SilenceErrors: true, // run prints the one line; cobra would add its usage
		SilenceUsage:  true,
		Args:          cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if version {
				printVersion(c.OutOrStdout())
				return nil
			}
			return c.Help()
		},
	}
	root.Flags().BoolVarP(&version, "version", "V", false, "print udstrace's version, commit, Go and cilium/ebpf versions and the kernel features it finds")
	subs := []*cobra.Command{
		{
			Use:   "run [flags] (--workload echo | [--] COMMAND [ARG...])",
			Short: "trace a command from exec to exit, its children too, or the built-in AF_UNIX echo experiment",
			Long: "Run COMMAND (or the echo workload) and trace it from exec to exit, its children too;\n" +
				"exit with its status. Flags go before the command; -- ends them.",
			Example: "  udstrace run -- ls -l /\n  udstrace run --workload echo\n  udstrace run -f pprof -o heap.pb.gz -- ./myprog",
		},
		{
			Use:     "attach [flags] PID...",
			Short:   "trace running processes until Ctrl-C, --duration or their exit",
			Long:    "Trace running processes (and their new children) until Ctrl-C, --duration or their exit.\nPIDs are arguments, -p PID[,PID...], or both.",
			Example: "  udstrace attach 1234\n  udstrace attach -p 1234,5678 --duration 30s -f json -o heap.json",
		},
		{
			Use:     "trace [flags]",
			Short:   "trace every process on the machine (system-wide), or those --pid, --comm or --cgroup pick",
			Example: "  udstrace trace --duration 10s\n  udstrace trace --comm redis-server -f folded -o redis.folded",
		},
		{
			Use:     "top [flags]",
			Short:   "live view of the busiest call sites, system-wide",
			Example: "  udstrace top --interval 1s\n  udstrace top --comm python3",
		},
	}
	for _, c := range subs {
		name := strings.Fields(c.Use)[0]
		c.RunE = func(c *cobra.Command, args []string) error {
			inv.sub, inv.rest, inv.set = name, args, c.Flags().Changed
			return nil
		}
		c.Flags().SetInterspersed(name != "run") // run: what follows the command is the command's
		addFlags(c.Flags(), o)
		hideInapplicable(c.Flags(), name)
		c.Flags().SortFlags = false
		root.AddCommand(c)
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "print udstrace's version, commit, Go and cilium/ebpf versions and the kernel features it finds",
		Args:  cobra.NoArgs,
		Run:   func(c *cobra.Command, _ []string) { printVersion(c.OutOrStdout()) },
	}, newView(), &cobra.Command{
		Use:    "docs DIR",
		Short:  "write man pages (DIR/man1) and shell completions (DIR/completions) for make install",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE:   func(c *cobra.Command, args []string) error { return writeDocs(c.Root(), args[0]) },
	})
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return flagError(c, err) })
	return root
}

// flagError words a parse error as one line naming the flag, its valid values and where help is.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	var name, value string
	if _, err := fmt.Sscanf(msg, "invalid argument %q for %q flag:", &value, &name); err == nil {
		name = strings.TrimPrefix(name[strings.LastIndex(name, " ")+1:], "--")
		want := flagRanges[name]
		if want == "" {
			want = "a value of the flag's type"
			if f := c.Flags().Lookup(name); f != nil && f.Value.Type() == "bool" {
				want = "true or false"
			}
		}
		return fmt.Errorf("--%s: invalid value %q: use %s", name, value, want)
	}
	if word, ok := strings.CutPrefix(msg, "unknown shorthand flag: "); ok {
		// -format: a long flag with one dash, as Go's flag package took it.
		if _, arg, ok := strings.Cut(word, " in -"); ok && c.Flags().Lookup(strings.SplitN(arg, "=", 2)[0]) != nil {
			return fmt.Errorf("-%s: long flags take two dashes: use --%s", arg, arg)
		}
	}
	return fmt.Errorf("%s (see udstrace %s --help)", msg, c.Name())
}

// hideInapplicable hides from sub's help the flags that mean nothing there (appliesTo).
func hideInapplicable(fs *pflag.FlagSet, sub string) {
	fs.VisitAll(func(f *pflag.Flag) {
		if !applies(f.Name, sub) {
			f.Hidden = true
		}
	})
}

// writeDocs writes a man page per command into dir/man1 and bash, zsh and fish completions into
// dir/completions.
func writeDocs(root *cobra.Command, dir string) error {
	man, comp := filepath.Join(dir, "man1"), filepath.Join(dir, "completions")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("%w: %w", errDocs, err)
		}
	}
	root.DisableAutoGenTag = true // the pages stay the same from build to build
	hdr := &doc.GenManHeader{Title: "UDSTRACE", Section: "1", Source: "udstrace", Manual: "udstrace manual"}
	if err := doc.GenManTree(root, hdr, man); err != nil {
		return fmt.Errorf("%w: man pages: %w", errDocs, err)
	}
	for file, gen := range map[string]func(string) error{
		"udstrace.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_udstrace":     root.GenZshCompletionFile,
		"udstrace.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	} {
		if err := gen(filepath.Join(comp, file)); err != nil {
			return fmt.Errorf("%w: completion %s: %w", errDocs, file, err)
		}
	}
	return nil
}
