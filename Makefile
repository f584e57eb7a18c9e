# swarmnode: `make demo` runs the example, `make test` runs everything CI runs.
GO      ?= go
BIN     := bin/swarmnode
CONFIG  ?= examples/gpt/tiny.yaml
FUZZTIME ?= 10s
SOAK    ?= 10m

.PHONY: build test lint bench demo demo-local soak partition fuzz gpu-test gpu-bin clean

build:
	$(GO) build -o $(BIN) ./cmd/swarmnode

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needs to run on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Everything CI runs: lint, then every package's tests (fuzz seeds included),
# then a loud line for each test that could not run here (no chromium, no
# OpenBLAS): go test shows skips only with -v.
test: lint build
	$(GO) test -p 2 -timeout 20m ./...
	@$(GO) test -count=1 -v -run 'TestStatusPageInBrowser|TestBackendsAgree|TestSplitProducts' ./swarm ./stages/blas 2>&1 | \
	  grep -E -e 'SKIP|not available|not installed' | sed 's/^ */WARNING: not tested here: /' || true

bench: build
	bash bench/cpu.sh

# The main job: a local swarm (bootstrap, 2 holders per stage, a trainer) on loopback.
demo: build
	CONFIG=$(CONFIG) bash examples/gpt/local-swarm.sh

# The centralized baseline: the same model trained in one process.
demo-local: build
	$(BIN) local --config $(CONFIG) --summary out/local-summary.json

# A network partition of a live swarm in network namespaces (root): two
# layouts, each cut for 60 s and healed; PASS/FAIL per check (docs/reliability.md).
partition: build
	bash bench/partition.sh

# The churn soak (bench/soak): 13 swarmnode processes, a random holder
# killed, frozen or stopped every 10-20 s and replaced, for SOAK (default 10m)
# of training; then the same steps unchurned. Prints the figures; fails on a
# lost microbatch, a process that exits on its own, a trainer that does not
# finish or RSS growing past 2x (and +64 MB). Logs and samples.csv in out/soak/.
soak: build
	$(GO) run ./bench/soak -bin $(BIN) -duration $(SOAK) -out out/soak

# Coverage-guided runs of every fuzz target, FUZZTIME each (a nightly-sized
# run: FUZZTIME=1000000x, a million executions per target); ends with each
# target's executions. A crash stops it with the failing input kept under
# the package's testdata/fuzz as a seed.
fuzz:
	@set -e; report=$$(mktemp); for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "== $$pkg $$f"; out=$$(mktemp); \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg >$$out 2>&1 || { cat $$out; exit 1; }; tail -3 $$out; \
	    execs=$$(grep -o 'execs: [0-9]*' $$out | tail -1 | cut -d' ' -f2); rm -f $$out; \
	    printf '%-12s %-36s %s\n' "$${execs:-?}" "$$f" "$$pkg" >>$$report; \
	  done; \
	done; echo "executions per fuzz target, 0 crashes:"; cat $$report; rm -f $$report

clean:
	rm -rf bin out

# The CUDA tests: run on a machine with an NVIDIA GPU (they skip, saying why, without one).
gpu-test:
	$(GO) test -count=1 -v -timeout 10m ./cuda/
	$(GO) test -count=1 -v -timeout 10m -run GPU ./stages/
	$(GO) test -count=1 -v -timeout 10m -run GPU ./sample/

# For a GPU machine without Go: build here, carry bin/, run bin/cudatest -test.v, bin/stagestest -test.v -test.run GPU and bin/sampletest -test.v -test.run GPU there.
gpu-bin:
	$(GO) test -c -o bin/cudatest ./cuda/
	$(GO) test -c -o bin/stagestest ./stages/
	$(GO) test -c -o bin/sampletest ./sample/
	$(GO) build -o bin/stagebench ./bench/gpu/stagebench
	$(GO) build -o bin/gputrain ./bench/gpu/gputrain
