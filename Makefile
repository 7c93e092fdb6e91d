# svidd — run `make help` for the targets.
GO        ?= go
BIN       := bin
PKGS      := ./...
FUZZTIME  ?= 20s
export CGO_ENABLED ?= 0
# grpcnotrace keeps golang.org/x/net/trace out of svidd: it pulls in html/template, whose
# reflective method calls make the linker keep every exported method of every reachable type
# (2.3 MB of code and 2.4 MB of pclntab, about 3.7 MiB of idle RSS). gRPC tracing is off by
# default and svidd never turns it on. test/load builds svidd with the same tags.
BUILDTAGS ?= grpcnotrace

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/svidd and bin/svidctl
	$(GO) build -trimpath -tags '$(BUILDTAGS)' -o $(BIN)/svidd ./cmd/svidd
	$(GO) build -trimpath -tags '$(BUILDTAGS)' -o $(BIN)/svidctl ./cmd/svidctl

.PHONY: run
run: build ## Build, then run svidd in the foreground with the built-in defaults
	./$(BIN)/svidd run $(ARGS)

.PHONY: etcd
etcd: ## Build the test etcd server into ~/.cache/svidd-tools (once per version; the registry tests run it)
	@test/tools/etcd/build.sh >/dev/null

.PHONY: test
test: etcd ## Vet, then every test with the race detector (what CI runs)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 9m $(PKGS)
	@# Under -race the two long-haul tests run scaled down; run them at full size too
	@# (100,000 stream cycles, 200 SIGKILL rounds), without the race detector.
	$(GO) test -count=1 -timeout 5m -run 'TestHygieneStreamCycles|TestKillDuringWritesLosesNothing' ./test

.PHONY: test-short
test-short: ## Unit tests only, no race detector (quick loop)
	$(GO) test -count=1 -short $(PKGS)

.PHONY: bench
bench: ## Go benchmarks for the hot paths, then the load suite (make bench-load) and its plot
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)
	$(MAKE) bench-load bench-plot

.PHONY: bench-load
bench-load: ## Load suite against a real svidd (~3.5 min; root for 1,000 uids) -> docs/bench.csv
	rm -f docs/bench.csv
	$(GO) run ./test/load -suite -waitQuiet 30s -csv docs/bench.csv

.PHONY: bench-plot
bench-plot: ## docs/bench.png from docs/bench.csv
	$(GO) run ./test/load/plot -csv docs/bench.csv -out docs/bench.png

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 20s)
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

.PHONY: lint
lint: ## gofmt and go vet
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

.PHONY: clean
clean: ## Remove build output and the local data dir
	rm -rf $(BIN) .svidd
