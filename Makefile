# carom build, test and demo entry points. Every target installs what it needs,
# so `make demo` and `make test` work on a fresh Debian machine (as root).

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
CLANG        ?= clang
BPF_SRC      := $(wildcard bpf/*.c bpf/*.h)
BPF_OBJDIR   := src/carom/bpf/obj
BPF_OBJS     := $(patsubst bpf/%.bpf.c,$(BPF_OBJDIR)/%.bpf.o,$(wildcard bpf/*.bpf.c))
BPF_CFLAGS   := -O2 -g -target bpf -Wall -Werror -I/usr/include/x86_64-linux-gnu -Ibpf
GCC          ?= gcc
# The compiled Maglev fill, loaded through ctypes. -ffp-contract=off: a fused
# multiply-add would round differently from numpy and change the tables.
MAGLEV_SO    := src/carom/sched/_maglev_fill.so
MAGLEV_CFLAGS := -O2 -std=c11 -Wall -Wextra -Werror -fPIC -shared -ffp-contract=off -fno-fast-math
APT_PACKAGES := clang llvm libbpf-dev libelf-dev bpftool iproute2 ethtool tcpdump curl \
                nftables netsniff-ng haproxy wrk python3-venv procps gcc iputils-ping keepalived tmux
STAMP        := build/.stamps

.PHONY: all deps sysdeps venv bpf test test-unit lint demo bench clean

all: bpf

deps: sysdeps venv

# System packages: installed once, remembered by a stamp file.
sysdeps: $(STAMP)/apt
$(STAMP)/apt:
	@mkdir -p $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "apt: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

# Python environment with carom installed in editable mode.
venv: $(STAMP)/venv
$(STAMP)/venv: pyproject.toml | $(STAMP)/apt
	@mkdir -p $(STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Everything compiled: the BPF objects and the Maglev helper (test, demo and
# bench depend on this target).
bpf: $(BPF_OBJS) $(MAGLEV_SO)
$(MAGLEV_SO): src/carom/sched/maglev_fill.c | $(STAMP)/apt
	$(GCC) $(MAGLEV_CFLAGS) $< -o $@ -lm

$(BPF_OBJDIR)/%.bpf.o: bpf/%.bpf.c $(BPF_SRC) | $(STAMP)/apt
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

test: deps bpf
	$(PY) -m pytest -q tests

test-unit: deps bpf
	$(PY) -m pytest -q tests/unit tests/packets

lint: deps
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

demo: deps bpf
	$(VENV)/bin/carom lab demo

bench: deps bpf
	$(PY) -m benchmarks.run

clean:
	rm -rf build src/carom/bpf/obj $(MAGLEV_SO)

# --- packaging: a wheel that carries the compiled BPF objects (setup.py builds them
# with clang), and an install as a systemd service. Override the paths as needed.
PREFIX     ?= /usr/local
CAROM_HOME ?= /opt/carom
UNITDIR    ?= /etc/systemd/system
CONFDIR    ?= /etc/carom

.PHONY: dist install
dist: deps
	rm -rf dist
	$(PY) -m build --outdir dist .

# carom in its own venv (Debian's python refuses system-wide pip), the command in
# $(PREFIX)/bin, the unit carom@.service, and $(CONFDIR) for the instances' configs.
install: dist
	test -x $(CAROM_HOME)/bin/python || $(PYTHON) -m venv $(CAROM_HOME)
	$(CAROM_HOME)/bin/pip install -q --force-reinstall dist/carom-*.whl
	install -d $(PREFIX)/bin $(UNITDIR)
	ln -sf $(CAROM_HOME)/bin/carom $(PREFIX)/bin/carom
	install -d -m 0755 $(CONFDIR)
	sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@CONFDIR@|$(CONFDIR)|g' \
	    packaging/carom@.service > $(UNITDIR)/carom@.service
	chmod 0644 $(UNITDIR)/carom@.service
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
