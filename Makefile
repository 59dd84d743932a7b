# funtun — build, test, install.
PREFIX ?= /usr/local
GO     ?= go
CC     ?= cc
CFLAGS ?= -O2 -g -Wall -Wextra
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

GOFILES := $(shell find . -name '*.go' -not -path './bench/*' 2>/dev/null)
CFILES  := $(wildcard preload/*.c preload/*.h)

.PHONY: all build run test test-deps vet demo bench install clean

all: build

build: bin/funtun bin/libfuntun.so

bin/funtun: $(GOFILES) go.mod
	$(GO) build -buildvcs=auto -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/funtun

# The LD_PRELOAD library; built only once preload/ has C sources.
bin/libfuntun.so: $(CFILES)
	@mkdir -p bin
	@if ls preload/*.c >/dev/null 2>&1; then \
	  echo "$(CC) -shared -fPIC $(CFLAGS) -o $@ preload/*.c -ldl -lpthread"; \
	  $(CC) -shared -fPIC $(CFLAGS) -o $@ preload/*.c -ldl -lpthread; \
	else touch $@; fi

# The quick start's main job: a forwarder on the built-in default profile.
demo: bin/funtun
	bin/funtun forward --listen 127.0.0.1:8080 --to 127.0.0.1:8000 profile=direct

test-deps:
	scripts/test-deps.sh

# Other systems are cross-compiled and vetted (tests included), so that
# nothing Linux-only slips out from behind its build tag.
CROSS ?= darwin/amd64 darwin/arm64 freebsd/amd64

vet:
	$(GO) vet ./...
	@for t in $(CROSS); do \
	  echo "GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./... && $(GO) build -o /dev/null ./cmd/funtun"; \
	  GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./... || exit 1; \
	  GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) build -o /dev/null ./cmd/funtun || exit 1; \
	done
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "$$unformatted" >&2; echo "gofmt: files above need formatting" >&2; exit 1; fi

# The whole test suite: installs the real peers it needs, vets, builds,
# runs the engine's tests with the race detector and every other test.
test: test-deps vet build
	$(GO) test -race -count=1 ./funnel/...
	FUNTUN_BIN=$(CURDIR)/bin FUNTUN_PRELOAD=$(CURDIR)/bin/libfuntun.so $(GO) test -count=1 -timeout 12m $$($(GO) list ./... | grep -v '/funnel$$')

bench: build
	bench/run-all.sh

install: build
	install -D -m 0755 bin/funtun $(DESTDIR)$(PREFIX)/bin/funtun
	@if [ -s bin/libfuntun.so ]; then install -D -m 0644 bin/libfuntun.so $(DESTDIR)$(PREFIX)/lib/funtun/libfuntun.so; fi

clean:
	rm -rf bin

# The quick start's main job: a SOCKS5 daemon on 127.0.0.1:1080 running the
# built-in default profile (direct).
run: build
	bin/funtun socks5d --listen 127.0.0.1:1080 profile=direct
