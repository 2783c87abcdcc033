package main

import (
	"github.com/spf13/pflag"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// TestFlagValues: every flag's bad values are refused before anything runs, with exit 2 and one
// line naming the flag and its range; the edge values just inside each range are accepted.
func TestFlagValues(t *testing.T) {
	bin := buildCLI(t)
	bad := []struct {
		args []string
		want string // the flag, and a piece of its range
	}{
		{[]string{"--ring-size", "4294967296"}, "--ring-size 4294967296: use a power of two from 4096 to 1073741824"},
		{[]string{"--ring-size", "2048"}, "--ring-size 2048: use a power of two"},
		{[]string{"--ring-size", "12288"}, "--ring-size 12288: use a power of two"},
		{[]string{"--ring-size", "-1"}, "--ring-size: invalid value \"-1\": use a power of two"},
		{[]string{"--stack-bytes", "0"}, "--stack-bytes 0: use a power of two from 512 to 16384"},
		{[]string{"--stack-bytes", "32768"}, "--stack-bytes 32768: use a power of two from 512 to 16384"},
		{[]string{"--stack-bytes", "1000"}, "--stack-bytes 1000: use a power of two"},
		{[]string{"--stack-bytes", "x"}, "--stack-bytes: invalid value \"x\": use a power of two"},
		{[]string{"--duration", "-5s"}, "--duration -5s: use 0"},
		{[]string{"--duration", "5"}, "--duration: invalid value \"5\": use 0"},
		{[]string{"--interval", "1ns"}, "--interval 1ns: use at least 100ms"},
		{[]string{"--interval", "-1s"}, "--interval -1s: use at least 100ms"},
		{[]string{"--min-age", "-1s"}, "--min-age -1s: use 0 or more"},
		{[]string{"--top", "-5"}, "--top -5: use 1 to 100000"},
		{[]string{"--top", "0"}, "--top 0: use 1 to 100000"},
		{[]string{"--max-procs", "-1"}, "--max-procs -1: use 0 (no bound) to 1048576"},
		{[]string{"--max-procs", "1048577"}, "--max-procs 1048577: use 0"},
		{[]string{"--unwind-rows", "65535"}, "--unwind-rows 65535: use 65536 to 134217728"},
		{[]string{"--unwind-rows", "134217729"}, "--unwind-rows 134217729: use 65536"},
		{[]string{"--table-size", "1023"}, "--table-size 1023: use 1024 to 16777216"},
		{[]string{"--table-size", "16777217"}, "--table-size 16777217: use 1024"},
		{[]string{"--messages", "0"}, "--messages 0: use 1 to 1048576"},
		{[]string{"--messages", "1048577"}, "--messages 1048577: use 1"},
		{[]string{"--size", "-1"}, "--size -1: use 0 to 1048576 bytes"},
		{[]string{"--size", "1048577"}, "--size 1048577: use 0 to 1048576 bytes"},
		{[]string{"--sample-bytes", "-1"}, "--sample-bytes: invalid value \"-1\": use 0"},
		{[]string{"--min-size", "-1"}, "--min-size: invalid value \"-1\": use 0 or more bytes"},
		{[]string{"--workload", "nope"}, "--workload \"nope\": the only workload is echo"},
		{[]string{"--comm", "0123456789abcdef"}, "--comm \"0123456789abcdef\": use a process name of at most 15 bytes"},
		{[]string{"--user", ""}, "--user \"\""},
		{[]string{"--format", "xml"}, "unknown format \"xml\": use --format text"},
		{[]string{"--mode", "fast"}, "unknown mode \"fast\": use --mode full or --mode count"},
		{[]string{"--stack", "magic"}, "unknown stack mode \"magic\": use --stack auto"},
		{[]string{"--follow=maybe"}, "--follow: invalid value \"maybe\": use true or false"},
		{[]string{"--ring-size", "65536", "--stack-bytes", "16384"}, "--ring-size 65536 holds too few 16384-byte stack copies"},
		{[]string{"--format", "ndjson"}, "--format ndjson needs --interval"},
		{[]string{"--verify", "--mode", "count"}, "--verify works with udstrace run"},
		{[]string{"--no-such-flag"}, "unknown flag: --no-such-flag (see udstrace run --help)"},
		{[]string{"--format", "folded", "--weight", "width"}, "unknown weight \"width\": use --weight bytes, count, outstanding-bytes, outstanding-count"},
		{[]string{"--format", "folded", "--mode", "count", "--weight", "outstanding-bytes"}, "--weight outstanding-bytes: count mode traces no frees"},
		{[]string{"--format", "folded", "--folded-root", "thread"}, "--folded-root \"thread\": the only root is process"},
	}
	for _, c := range bad {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			args := append(append([]string{"run"}, c.args...), "--", "true")
			if c.args[0] == "--workload" {
				args = []string{"run", "--workload", c.args[1]}
			}
			stdout, stderr, code := runCLI(t, bin, args...)
			if code != exitUsage || stdout != "" {
				t.Errorf("exit %d, stdout %q: want exit %d and no output", code, stdout, exitUsage)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "udstrace: ") || !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q: want one line saying %q", stderr, c.want)
			}
		})
	}
	for _, args := range [][]string{
		{"attach", "--pid", "0"}, {"attach", "--pid", "4194305"}, {"attach", "--pid", "1,x"}, {"trace", "--pid", "-3"},
	} {
		_, stderr, code := runCLI(t, bin, args...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "use process IDs from 1 to 4194304") {
			t.Errorf("%v: exit %d, stderr %q: want exit 2 and --pid's range", args, code, stderr)
		}
	}

	// A flag given where it means nothing is refused, not ignored.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--duration", "1s", "--", "sleep", "3"}, "--duration applies only to attach, trace and top"},
		{[]string{"run", "--pid", "1", "--", "true"}, "--pid applies only to attach, trace and top"},
		{[]string{"run", "--interval", "1s", "--", "true"}, "--interval applies only to --format ndjson, --serve, --otlp-endpoint and top"},
		{[]string{"run", "--otlp-endpoint", "http://127.0.0.1:4318", "--", "true"}, "--otlp-endpoint applies only to attach and trace"},
		{[]string{"trace", "--otlp-endpoint", "ftp://x:1"}, `--otlp-endpoint: "ftp://x:1": use http://HOST:PORT`},
		{[]string{"run", "--serve", "127.0.0.1:9464", "--", "true"}, "--serve applies only to attach and trace"},
		{[]string{"top", "--serve", "127.0.0.1:9464"}, "--serve applies only to attach and trace"},
		{[]string{"trace", "--serve", "localhost"}, `--serve "localhost": use HOST:PORT`},
		{[]string{"trace", "--serve", "127.0.0.1:99999"}, `--serve "127.0.0.1:99999": use HOST:PORT`},
		{[]string{"run", "--messages", "5", "--", "true"}, "--messages applies only to run --workload echo"},
		{[]string{"run", "--user", "nobody", "--", "true"}, "--user applies only to run --workload echo"},
		{[]string{"trace", "--kill-after", "1s"}, "--kill-after applies only to run"},
		{[]string{"trace", "--size", "10"}, "--size applies only to run --workload echo"},
		{[]string{"run", "--weight", "count", "--", "true"}, "--weight applies only to --format folded"},
		{[]string{"run", "--format", "json", "--folded-root", "process", "--", "true"}, "--folded-root applies only to --format folded"},
	} {
		stdout, stderr, code := runCLI(t, bin, c.args...)
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q: want exit %d and one line saying %q", c.args, code, stderr, exitUsage, c.want)
		}
	}

	// The edges inside each range pass validation (the one place values are checked) ...
	good := [][]string{
		{"--ring-size", "4096", "--stack", "fp"}, {"--ring-size", "1073741824"}, {"--stack-bytes", "512"}, {"--stack-bytes", "16384", "--ring-size", "262144"},
		{"--duration", "0s"}, {"--interval", "100ms"}, {"--min-age", "0s"}, {"--top", "1"}, {"--top", "100000"},
		{"--max-procs", "0"}, {"--max-procs", "1048576"}, {"--unwind-rows", "65536"}, {"--unwind-rows", "134217728"},
		{"--table-size", "1024"}, {"--table-size", "16777216"}, {"--messages", "1"}, {"--messages", "1048576"},
		{"--size", "0"}, {"--size", "1048576"}, {"--sample-bytes", "0"}, {"--sample-bytes", "1"}, {"--min-size", "0"},
		{"--comm", "0123456789abcde"}, {"--format", "ndjson", "--interval", "1s"}, {"--mode", "count", "--stack", "fp"},
		{"--format", "folded", "--weight", "outstanding-count", "--folded-root", "process"}, {"--format", "folded", "--mode", "count", "--weight", "count"},
	}
	for _, args := range good {
		var o options
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		addFlags(fs, &o)
		if err := fs.Parse(args); err != nil {
			t.Errorf("%v: %v", args, err)
			continue
		}
		if msg := o.validate("run", []string{"true"}); msg != "" {
			t.Errorf("%v refused: %s", args, msg)
		}
	}
	// ... and the low edges together really trace.
	testenv.NeedRoot(t)
	stdout, stderr, code := runCLI(t, bin, "run", "--ring-size", "8192", "--stack-bytes", "512", "--table-size", "1024",
		"--unwind-rows", "65536", "--top", "1", "--max-procs", "1", "--min-age", "0s", "--comm", "true", "--", "true")
	if code != exitOK || !strings.HasPrefix(stdout, "udstrace report") {
		t.Errorf("low edges: exit %d, stderr %q", code, stderr)
	}
}
