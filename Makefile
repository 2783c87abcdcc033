# udstrace: build, test and check. Targets that need root escalate with sudo only when not root.
GO      ?= go
SUDO    := $(shell [ "$$(id -u)" -eq 0 ] || echo "sudo -E")
# Test binaries run as root through sudo; the go commands they start get root's own build cache (never
# root-owned files in yours) and your PATH (sudo's secure_path may lack go).
GOEXEC  := $(if $(SUDO),-exec "$(SUDO) env PATH=$(PATH) GOCACHE=$(CURDIR)/.build/root-gocache",)
COMMIT  := $(shell git describe --always --dirty 2>/dev/null)
BPF_SRC := $(wildcard bpf/*.c bpf/*.h)
GEN     := pkg/loader/udstrace_x86_bpfel.go pkg/loader/udstrace_x86_bpfel.o \
           bench/floor/floor_x86_bpfel.go bench/floor/floor_x86_bpfel.o

.PHONY: all build deps workload run test test-quick generate check-generate fuzz vet clean bench stress install docs

all: build

build: workload
	$(GO) build -ldflags "-X main.buildCommit=$(COMMIT)" -o udstrace ./cmd/udstrace

workload:
	$(MAKE) -C workload

# Man pages and shell completions, generated from the command tree (udstrace docs).
docs: build
	rm -rf .build/docs && ./udstrace docs .build/docs

# Install the binary, its man pages and bash/zsh/fish completions under $(DESTDIR)$(PREFIX).
PREFIX  ?= /usr/local
install: docs
	install -D -m 0755 udstrace $(DESTDIR)$(PREFIX)/bin/udstrace
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0644 .build/docs/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -D -m 0644 .build/docs/completions/udstrace.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/udstrace
	install -D -m 0644 .build/docs/completions/_udstrace $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_udstrace
	install -D -m 0644 .build/docs/completions/udstrace.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/udstrace.fish

# The main job: build, then trace the built-in AF_UNIX echo experiment.
run: build
	$(SUDO) ./udstrace run --workload echo

# What the tests need at run time (oracles and tools), installed when missing (scripts/deps.sh).
TEST_DEPS := gdb binutils bpftool bpftrace strace libc6-dev libc6-dbg g++ gcc make perl procps util-linux debuginfod dash sqlite3 redis-server libjemalloc2 libjemalloc-dev libtcmalloc-minimal4 libgoogle-perftools-dev libmimalloc2.0 libmimalloc-dev musl-tools chromium prometheus
# What make generate needs besides.
GEN_DEPS  := clang-19 llvm-19 libbpf-dev

deps:
	@scripts/deps.sh $(TEST_DEPS)

# The whole suite, BPF tests included (they need root; under CI=true they never skip).
test: deps build vet
	$(GO) test $(GOEXEC) -count=1 -p 1 -timeout 30m ./...

# Pure-Go tests only: no root, no BPF.
test-quick: workload
	$(GO) test -count=1 -short ./...

vet:
	$(GO) vet ./...
	@$(GO) mod tidy -diff >/dev/null || { $(GO) mod tidy -diff; echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }

# Regenerate the committed BPF objects (needs clang-19, llvm-strip-19, libbpf-dev): udstrace's, and the
# bench's trap-floor programs (bench/floor).
generate:
	@scripts/deps.sh $(GEN_DEPS)
	cd pkg/loader && $(GO) generate ./...
	cd bench/floor && $(GO) generate ./...

# Fails when the committed bpf2go outputs differ from a fresh build of bpf/ and bench/floor/.
check-generate: generate
	git diff --exit-code -- $(GEN) || { echo "bpf2go outputs are stale: run make generate and commit them"; exit 1; }

FUZZTIME ?= 20s
fuzz:
	scripts/fuzz.sh pkg/symbolize FuzzOpen $(FUZZTIME)
	scripts/fuzz.sh pkg/unwind FuzzParseEHFrame $(FUZZTIME)
	scripts/fuzz.sh pkg/unwind FuzzUnwind $(FUZZTIME)
	scripts/fuzz.sh pkg/report FuzzBuilder $(FUZZTIME)
	scripts/fuzz.sh pkg/probeplace FuzzChoose $(FUZZTIME)
	scripts/fuzz.sh pkg/report FuzzSiteJSON $(FUZZTIME)
	scripts/fuzz.sh pkg/kstack FuzzID $(FUZZTIME)
	scripts/fuzz.sh pkg/ktable FuzzDecodeEntry $(FUZZTIME)

# Side-by-side overhead figures (not part of test): untraced, interposer, bpftrace, the trap floors (bench/floor),
# heaptrack and the udstrace modes on allocbench, then a gcc compile under the same tools. See bench/README.md.
bench: build
	@command -v bpftrace >/dev/null && command -v heaptrack >/dev/null || $(SUDO) apt-get install -y bpftrace heaptrack || echo "bench: bpftrace/heaptrack unavailable: their rows are skipped"
	$(GO) build -o .build/bench ./bench && $(SUDO) .build/bench $(BENCHFLAGS)

# Flood, leftovers after every way of dying, concurrent tracers, soak, target churn.
stress: build
	$(GO) build -o .build/stress ./stress && $(SUDO) .build/stress $(STRESSFLAGS)

clean:
	$(MAKE) -C workload clean
	rm -f udstrace
