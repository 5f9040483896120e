# sedboot — run `make help` for the targets.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
export CGO_ENABLED := 0

GO        ?= go
BIN       := bin
TOOLS     := build/tools
STATICCHECK_VERSION := v0.8.2
# Every product program (main packages under tools/ and agent/) becomes a
# static binary in bin/; helper programs under scripts/ and images/ are run
# with `go run` by the targets that need them.
CMDS      = $(shell $(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./tools/... ./agent/... 2>/dev/null)
TEST_TIMEOUT ?= 60m

.PHONY: help prereqs kernel build test unit lint bench fuzz demo demo-sed clean

help:
	@echo "make demo     set up and run the demo (installs what it needs)"
	@echo "make demo-sed the software-SED life cycle alone, on the host, in seconds"
	@echo "make test     run every test: lint, unit, interop and QEMU boot tests (installs what it needs)"
	@echo "make build    static binaries in $(BIN)/"
	@echo "make kernel   fetch the pinned boot kernel into build/kernel (KERNEL_DEB=FILE: use that .deb)"
	@echo "make lint     gofmt, go vet, staticcheck"
	@echo "make bench    Go benchmarks; results table in docs/benchmarks.md"
	@echo "make fuzz     run each fuzz target for FUZZTIME (default 30s)"
	@echo "make clean    remove $(BIN)/ and build/"

prereqs:
	@scripts/prereqs.sh

# The QEMU boot tests need Debian's kernel; tests never fetch it themselves.
kernel:
	@$(GO) run ./images/cmd/bootkernel $(if $(KERNEL_DEB),-deb $(KERNEL_DEB))

build:
	@mkdir -p $(BIN)
	@echo "build: static binaries into $(BIN)/"
	@if [ -n "$(CMDS)" ]; then $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/ $(CMDS); fi
	@ls -1 $(BIN)

$(TOOLS)/staticcheck:
	@echo "lint: installing staticcheck $(STATICCHECK_VERSION) into $(TOOLS)/"
	@GOBIN=$(CURDIR)/$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(TOOLS)/staticcheck
	@echo "lint: gofmt"
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@echo "lint: go vet"
	@$(GO) vet ./...
	@echo "lint: staticcheck"
	@$(TOOLS)/staticcheck ./...

unit:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

test: prereqs lint kernel
	@echo "test: go test ./... (unit, fuzz seed corpora, interop and QEMU boot tests)"
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

bench: prereqs
	@scripts/bench.sh

FUZZTIME ?= 30s
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

demo: prereqs build
	@scripts/demo.sh

# The software-SED life cycle on the host alone (no QEMU, a few seconds).
demo-sed:
	@$(GO) run ./scripts/seddemo

clean:
	rm -rf $(BIN) build
