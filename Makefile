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

build: bin/funtun bin/funtun-core bin/libfuntun.so

# funtun-core is the Go program: every subcommand, and every launch.
bin/funtun-core: $(GOFILES) go.mod
	$(GO) build -buildvcs=auto -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/funtun

# funtun is the small C front-end users run (preload/launch/, outside the
# library's glob): it launches a program through the running daemon, and
# hands everything else to funtun-core beside it (issue 16: a Go binary
# costs tens of milliseconds to start). Static, since a static binary
# starts fastest, and with musl where musl-gcc is installed: a static
# glibc program starts in twice the time here (its start-up asks the CPU
# about itself with cpuid, which a hypervisor traps), and every start of
# the front-end is part of a launch. The kernel's headers (linux/filter.h)
# come from the system's include directory, after musl's own. Without
# musl, glibc static; without a static libc, dynamic.
FRONT_SRC := preload/launch/funtun.c $(wildcard preload/launch/*.h)
MUSL_CC   ?= musl-gcc
TRIPLET   := $(shell $(CC) -dumpmachine 2>/dev/null)

# The Makefile too: a bin/funtun from before the front-end is the Go program.
bin/funtun: $(FRONT_SRC) Makefile
	@mkdir -p bin
	@if command -v $(MUSL_CC) >/dev/null 2>&1 && \
	    $(MUSL_CC) -static $(CFLAGS) -idirafter /usr/include -idirafter /usr/include/$(TRIPLET) -o $@ preload/launch/funtun.c; then \
	  echo "$(MUSL_CC) -static $(CFLAGS) -o $@ preload/launch/funtun.c"; \
	elif echo "$(CC) -static $(CFLAGS) -o $@ preload/launch/funtun.c" && $(CC) -static $(CFLAGS) -o $@ preload/launch/funtun.c; then :; \
	else echo "note: no static libc: building $@ dynamically" >&2; \
	  echo "$(CC) $(CFLAGS) -o $@ preload/launch/funtun.c"; \
	  $(CC) $(CFLAGS) -o $@ preload/launch/funtun.c; fi

# The LD_PRELOAD library; built only once preload/ has C sources.
bin/libfuntun.so: $(CFILES)
	@mkdir -p bin
	@if ls preload/*.c >/dev/null 2>&1; then \
	  echo "$(CC) -shared -fPIC $(CFLAGS) -o $@ preload/*.c -ldl -lpthread"; \
	  $(CC) -shared -fPIC $(CFLAGS) -o $@ preload/*.c -ldl -lpthread; \
	else touch $@; fi

# funtun doctor's probe (preload/probe/, outside the library's glob): a
# dynamic build that the library hooks, and a static one that it cannot.
# Without a static libc (glibc-static, libc6-dev's libc.a) the static one
# is left out, with a note: the doctor then skips only that probe.
build: bin/funtun-probe bin/funtun-probe-static

bin/funtun-probe: preload/probe/probe.c
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $@ $< -lresolv -lanl

bin/funtun-probe-static: preload/probe/probe.c
	@mkdir -p bin
	@echo "$(CC) -static -DFUNTUN_PROBE_STATIC $(CFLAGS) -o $@ $<"
	@$(CC) -static -DFUNTUN_PROBE_STATIC $(CFLAGS) -o $@ $< || \
	  { rm -f $@; echo "note: no static libc, so no $@: funtun doctor will skip its static-child probe" >&2; }

# The quick start's main job: a forwarder on the built-in default profile.
demo: bin/funtun bin/funtun-core
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
	install -D -m 0755 bin/funtun-core $(DESTDIR)$(PREFIX)/lib/funtun/funtun-core
	@if [ -s bin/libfuntun.so ]; then install -D -m 0644 bin/libfuntun.so $(DESTDIR)$(PREFIX)/lib/funtun/libfuntun.so; fi
	install -D -m 0755 bin/funtun-probe $(DESTDIR)$(PREFIX)/lib/funtun/funtun-probe
	@if [ -f bin/funtun-probe-static ]; then install -D -m 0755 bin/funtun-probe-static $(DESTDIR)$(PREFIX)/lib/funtun/funtun-probe-static; fi
	@# The per-user daemon's units, naming this PREFIX's funtun, where
	@# systemd looks for a package's user units: after install,
	@# `systemctl --user enable --now funtun-daemon.socket` starts the
	@# daemon on demand, and launches are served by it.
	@mkdir -p $(DESTDIR)$(PREFIX)/lib/systemd/user
	@for u in funtun-daemon.socket funtun-daemon.service; do \
	  echo "install contrib/systemd/user/$$u $(DESTDIR)$(PREFIX)/lib/systemd/user/$$u"; \
	  sed 's#/usr/local/bin/funtun#$(PREFIX)/bin/funtun#g' contrib/systemd/user/$$u > $(DESTDIR)$(PREFIX)/lib/systemd/user/$$u && \
	  chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/user/$$u || exit 1; \
	done

clean:
	rm -rf bin

# The quick start's main job: a SOCKS5 daemon on 127.0.0.1:1080 running the
# built-in default profile (direct).
run: build
	bin/funtun socks5d --listen 127.0.0.1:1080 profile=direct

# ---- The C API and link-in mode (docs/c-api.md) -----------------------------
# libfuntun-api is the hook code of libfuntun.so compiled once more with
# preload/ft_linkin.h forced in, which names every hook __wrap_NAME, plus
# the API (preload/api.c): linked plainly it gives funtun.h's functions;
# linked with -Wl,--wrap=NAME for each hook (funtun-linkin.pc), the
# program's own socket calls go through the funnel without LD_PRELOAD.
API_CFLAGS   = -fPIC $(CFLAGS) -include preload/ft_linkin.h
API_HEADERS  := $(wildcard preload/include/*.h)
LINKIN_NAMES := $(shell sed -n 's/^\#define \([a-z0-9_]*\) __wrap_.*/\1/p' preload/ft_linkin.h 2>/dev/null)
LINKIN_WRAP  := -Wl,$(shell echo $(patsubst %,--wrap=%,$(LINKIN_NAMES)) | tr ' ' ',')
API_OBJS     := $(patsubst preload/%.c,bin/obj-api/%.o,$(wildcard preload/*.c))
EXAMPLES_C   := bin/examples/fetch bin/examples/serve bin/examples/httpget

.PHONY: api examples-c install-api
build: api examples-c
install: install-api
api: bin/libfuntun-api.so bin/libfuntun-api.a bin/funtun.pc bin/funtun-linkin.pc
examples-c: $(EXAMPLES_C)

bin/obj-api/%.o: preload/%.c $(CFILES)
	@mkdir -p bin/obj-api
	$(CC) -c $(API_CFLAGS) -o $@ $<

bin/libfuntun-api.so: $(API_OBJS)
	$(CC) -shared -Wl,-soname,libfuntun-api.so -o $@ $(API_OBJS) -ldl -lpthread

bin/libfuntun-api.a: $(API_OBJS)
	rm -f $@
	ar rcs $@ $(API_OBJS)

# The .pc files here point at the build tree; install-api writes them
# again for $(PREFIX).
define funtun_pc
prefix=$(1)
libdir=$(2)
includedir=$(3)

Name: funtun
Description: sockets of a named template through the Funnel Tunnel (funtun daemon)
Version: $(VERSION)
Libs: -L$${libdir} -lfuntun-api
Libs.private: -ldl -lpthread
Cflags: -I$${includedir}
endef
define funtun_linkin_pc
prefix=$(1)
libdir=$(2)
includedir=$(3)

Name: funtun-linkin
Description: link-in mode: the program's own socket calls go through the Funnel Tunnel
Version: $(VERSION)
Libs: -L$${libdir} $(LINKIN_WRAP) -lfuntun-api -ldl -lpthread
Cflags: -I$${includedir}
endef
export funtun_pc_build = $(call funtun_pc,$(CURDIR),$(CURDIR)/bin,$(CURDIR)/preload/include)
export funtun_linkin_pc_build = $(call funtun_linkin_pc,$(CURDIR),$(CURDIR)/bin,$(CURDIR)/preload/include)
export funtun_pc_install = $(call funtun_pc,$(PREFIX),$(PREFIX)/lib,$(PREFIX)/include)
export funtun_linkin_pc_install = $(call funtun_linkin_pc,$(PREFIX),$(PREFIX)/lib,$(PREFIX)/include)

bin/funtun.pc: Makefile
	@mkdir -p bin
	printf '%s\n' "$$funtun_pc_build" > $@

bin/funtun-linkin.pc: Makefile preload/ft_linkin.h
	@mkdir -p bin
	printf '%s\n' "$$funtun_linkin_pc_build" > $@

# The examples: fetch and serve use the API (the shared library, found next
# to them through the run path); httpget is an unchanged program built in
# link-in mode, with the static library so that it runs anywhere.
bin/examples/fetch: examples/c/fetch.c $(API_HEADERS) bin/libfuntun-api.so
	@mkdir -p bin/examples
	$(CC) $(CFLAGS) -Ipreload/include -o $@ $< -Lbin -lfuntun-api -Wl,-rpath,'$$ORIGIN/..'

bin/examples/serve: examples/c/serve.c $(API_HEADERS) bin/libfuntun-api.so
	@mkdir -p bin/examples
	$(CC) $(CFLAGS) -Ipreload/include -o $@ $< -Lbin -lfuntun-api -Wl,-rpath,'$$ORIGIN/..'

bin/examples/httpget: examples/c/httpget.c bin/libfuntun-api.a
	@mkdir -p bin/examples
	$(CC) $(CFLAGS) -o $@ $< $(LINKIN_WRAP) bin/libfuntun-api.a -ldl -lpthread

install-api: api
	install -D -m 0755 bin/libfuntun-api.so $(DESTDIR)$(PREFIX)/lib/libfuntun-api.so
	install -D -m 0644 bin/libfuntun-api.a $(DESTDIR)$(PREFIX)/lib/libfuntun-api.a
	install -D -m 0644 preload/include/funtun.h $(DESTDIR)$(PREFIX)/include/funtun.h
	@mkdir -p $(DESTDIR)$(PREFIX)/lib/pkgconfig
	printf '%s\n' "$$funtun_pc_install" > $(DESTDIR)$(PREFIX)/lib/pkgconfig/funtun.pc
	printf '%s\n' "$$funtun_linkin_pc_install" > $(DESTDIR)$(PREFIX)/lib/pkgconfig/funtun-linkin.pc
