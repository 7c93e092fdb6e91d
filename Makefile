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

.PHONY: tools
tools: ## Build the pinned step-ca and etcd the fleet tests run, into a cache outside the repo (first run only, ~7 min each)
	@./test/tools/stepca.sh >/dev/null
	@test/tools/etcd/build.sh >/dev/null

.PHONY: etcd
etcd: ## Build the test etcd server into ~/.cache/svidd-tools (once per version; the registry tests run it)
	@test/tools/etcd/build.sh >/dev/null

.PHONY: test
test: tools ## Vet, then every test with the race detector (what CI runs)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 15m $(PKGS)
	@# Under -race the stream-cycle test runs scaled down (its client is the race-built test
	@# itself); run it at full size too (100,000 cycles), without the race detector. The
	@# SIGKILL test already did its full 200 rounds above, with plain svidd and svidctl.
	$(GO) test -count=1 -timeout 5m -run 'TestHygieneStreamCycles' ./test

.PHONY: test-short
test-short: ## Unit tests only, no race detector (quick loop)
	$(GO) test -count=1 -short $(PKGS)

.PHONY: bench
bench: ## Go benchmarks for the hot paths, then the load suite (make bench-load) and its plot
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)
	$(MAKE) bench-load bench-plot

.PHONY: bench-load
bench-load: ## Load suite against a real svidd and the floor server (~5.5 min; root for 1,000 uids) -> docs/bench.csv
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

# make install: PREFIX and DESTDIR as every Makefile has them; the unit's ExecStart, -config
# and Documentation= are rewritten to where the files land.
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/svidd

.PHONY: install
install: build ## Install binaries, the systemd unit, /etc/svidd/svidd.hcl (kept if present) and docs (PREFIX, DESTDIR)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/svidd $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BIN)/svidd $(BIN)/svidctl $(DESTDIR)$(BINDIR)/
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/etc/svidd/|$(SYSCONFDIR)/svidd/|g' \
	    -e 's|^Documentation=.*|Documentation=file://$(DOCDIR)/README.md|' \
	    examples/systemd/svidd.service > $(DESTDIR)$(UNITDIR)/svidd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/svidd.service
	@# The unit's configuration; an existing one is the operator's and stays.
	test -e $(DESTDIR)$(SYSCONFDIR)/svidd/svidd.hcl || install -m 0644 examples/systemd/svidd.hcl $(DESTDIR)$(SYSCONFDIR)/svidd/svidd.hcl
	install -m 0644 README.md docs/SECURITY.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 conf/svidd.hcl $(DESTDIR)$(DOCDIR)/svidd-defaults.hcl
	cp -R examples $(DESTDIR)$(DOCDIR)/ && find $(DESTDIR)$(DOCDIR)/examples -name '*_test.go' -delete
	@echo "Installed. Next: useradd --system --no-create-home --shell /usr/sbin/nologin svidd;"
	@echo "  systemctl daemon-reload && systemctl enable --now svidd"

.PHONY: uninstall
uninstall: ## Remove what make install put (the config file and the state in /var/lib/svidd stay)
	rm -f $(DESTDIR)$(BINDIR)/svidd $(DESTDIR)$(BINDIR)/svidctl $(DESTDIR)$(UNITDIR)/svidd.service
	rm -rf $(DESTDIR)$(DOCDIR)

.PHONY: clean
clean: ## Remove build output and the local data dir
	rm -rf $(BIN) .svidd
