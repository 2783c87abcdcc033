package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const deployDir = "../../deploy"

// parseArgs parses a udstrace command line as run does before tracing: the command tree, then
// validate and inapplicable; it returns the problem, "" when udstrace would start.
func parseArgs(args []string) string {
	var o options
	var inv invocation
	root := newRoot(&o, &inv)
	root.SetArgs(args)
	root.SetOut(io.Discard)
	if err := root.Execute(); err != nil {
		return usageLine(err)
	}
	if inv.sub == "" {
		return "no subcommand"
	}
	if o.daemon() && o.interval <= 0 {
		o.interval = defaultServeInterval
	}
	if msg := o.validate(inv.sub, inv.rest); msg != "" {
		return msg
	}
	return o.inapplicable(inv.sub, inv.set)
}

// daemonSet is what the test reads of deploy/daemonset.yaml.
type daemonSet struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Spec struct {
				HostPID    bool `yaml:"hostPID"`
				Containers []struct {
					Args            []string `yaml:"args"`
					SecurityContext struct {
						Capabilities struct {
							Drop []string `yaml:"drop"`
							Add  []string `yaml:"add"`
						} `yaml:"capabilities"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// TestDeployFiles: the DaemonSet's and the image's command lines are ones udstrace accepts;
// every flag named anywhere in deploy/ is one of udstrace trace's; the DaemonSet runs in the
// host's PID namespace with exactly the capabilities caps.go names for trace and the BTF mount;
// promtool accepts the Prometheus configuration.
func TestDeployFiles(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(deployDir, "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds *daemonSet
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var d daemonSet
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("daemonset.yaml: %v", err)
		}
		if d.Kind == "DaemonSet" {
			ds = &d
		}
	}
	if ds == nil || len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatal("daemonset.yaml has no DaemonSet with one container")
	}
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	if msg := parseArgs(c.Args); msg != "" {
		t.Errorf("the DaemonSet's args %q: %s", c.Args, msg)
	}
	if !slices.Contains(c.Args, "--serve") {
		t.Errorf("the DaemonSet does not serve: %q", c.Args)
	}
	if !pod.HostPID {
		t.Error("the DaemonSet is not in the host's PID namespace (hostPID)")
	}
	var want []string
	for _, cp := range neededCaps("trace", options{}) {
		want = append(want, strings.TrimPrefix(cp.name, "CAP_"))
	}
	caps := c.SecurityContext.Capabilities
	if !slices.Equal(caps.Drop, []string{"ALL"}) || !slices.Equal(caps.Add, want) {
		t.Errorf("capabilities drop %v add %v; want drop [ALL] add %v (caps.go)", caps.Drop, caps.Add, want)
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(m struct {
		MountPath string `yaml:"mountPath"`
	}) bool {
		return m.MountPath == "/sys/kernel/btf"
	}) {
		t.Error("no /sys/kernel/btf mount")
	}

	docker, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := regexp.MustCompile(`(?m)^CMD (\[.*\])$`).FindSubmatch(docker)
	var args []string
	if cmd == nil || json.Unmarshal(cmd[1], &args) != nil {
		t.Fatal("the Dockerfile has no CMD [...] line")
	}
	if msg := parseArgs(args); msg != "" {
		t.Errorf("the image's CMD %q: %s", args, msg)
	}

	// Flags named in the manifest's comments too (the OTLP one); the Dockerfile's other flags
	// are apt-get's and docker's, its udstrace command line is the CMD checked above.
	files := []string{filepath.Join(deployDir, "daemonset.yaml")}
	trace, _, err := newRoot(&options{}, &invocation{}).Find([]string{"trace"})
	if err != nil {
		t.Fatal(err)
	}
	flagRE := regexp.MustCompile(`"?(--[a-z][a-z-]+)`)
	seen := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, m := range flagRE.FindAllSubmatch(b, -1) {
			name := strings.TrimPrefix(string(m[1]), "--")
			if trace.Flags().Lookup(name) == nil {
				t.Errorf("%s names --%s, which udstrace trace does not have", filepath.Base(f), name)
			}
			seen++
		}
	}
	if seen < 5 {
		t.Errorf("only %d flags found in deploy/: the pattern is wrong", seen)
	}

	promtool := needTool(t, "promtool", "prometheus")
	cfg := filepath.Join(deployDir, "prometheus.yml")
	out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput()
	if err != nil && strings.Contains(string(out), "field kubernetes_sd_configs not found") {
		// Debian's Prometheus is built without Kubernetes service discovery: check the rest (the
		// relabelling, the static job) with the pods' discovery in static form.
		t.Logf("this promtool has no Kubernetes discovery: checking deploy/prometheus.yml with it replaced by static_configs")
		cfg = withoutKubernetesSD(t, cfg)
		out, err = exec.Command(promtool, "check", "config", cfg).CombinedOutput()
	}
	if err != nil {
		t.Errorf("promtool check config deploy/prometheus.yml: %v\n%s", err, out)
	}
}

// withoutKubernetesSD writes a copy of the Prometheus configuration at path whose
// kubernetes_sd_configs are static_configs of one target.
func withoutKubernetesSD(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	jobs, _ := cfg["scrape_configs"].([]any)
	replaced := 0
	for _, j := range jobs {
		job, _ := j.(map[string]any)
		if _, ok := job["kubernetes_sd_configs"]; ok {
			delete(job, "kubernetes_sd_configs")
			job["static_configs"] = []any{map[string]any{"targets": []any{"127.0.0.1:9464"}}}
			replaced++
		}
	}
	if replaced == 0 {
		t.Fatal("no kubernetes_sd_configs to replace")
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
