# Developer and CI entry points for netmodels.
#
#   make run     set up if needed, then run the demo node with its status page (STATUS_PORT=8080)
#   make test    set up if needed, then run the suite under trial and under pytest
#   make lab     run only the fault lab (tests/lab: root, iproute2, iptables), under trial
#   make lint    ruff check, ruff format --check, mypy
#   make docs    build the HTML docs into docs/_build/html
#   make bench   run the benchmarks (installs the bench extra: uvloop, pyzmq)
#   make fuzz    run each atheris fuzz target for FUZZ_SECONDS (installs the fuzz extra)
#   make clean   remove build artifacts and caches (keeps .venv; see distclean)
#
# Setup is idempotent: the venv is created only when .venv/bin/python is missing, and
# the package is (re)installed only when setup.cfg or pyproject.toml changed, or a file
# was added to or removed from netmodels/ or plugins/ (the strict editable install links
# each file, so new modules such as netmodels/tap.py need the install re-run).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.netmodels-installed
FILES  := $(VENV)/.netmodels-files

PIP_FLAGS := --quiet --disable-pip-version-check --no-input

# The files the strict editable install links into build/__editable__.*.
PKG_FILES := $(sort $(shell find netmodels plugins -type f \( -name '*.py' -o -name '*.pyi' -o -name 'py.typed' \) -not -path '*/__pycache__/*' 2>/dev/null))
# Package data (the dashboard's page, script and stylesheet) is linked too.
PKG_FILES += $(sort $(wildcard netmodels/daemon/static/*))

# make run's ports: the status page and the demo server.
STATUS_PORT ?= 8080
DEMO_PORT ?= 8750
STATUS_URL = http://127.0.0.1:$(STATUS_PORT)/status
# The demo's admin token: made on the first make run, kept in the venv (mode 0600).
ADMIN_TOKEN_FILE = $(VENV)/admin-token

.PHONY: help setup sysdeps run test lab lint docs bench fuzz clean distclean FORCE

help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

# --- setup ------------------------------------------------------------------

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(PIP_FLAGS) --upgrade pip

# Rewritten only when the list of package files changes, so its mtime tracks that.
$(FILES): FORCE | $(VPY)
	@echo '$(PKG_FILES)' | tr ' ' '\n' | cmp -s - $@ 2>/dev/null \
	  || echo '$(PKG_FILES)' | tr ' ' '\n' > $@

$(STAMP): setup.cfg pyproject.toml $(FILES) | $(VPY)
	$(VPY) -m pip install $(PIP_FLAGS) -e '.[dev,docs]' --config-settings editable_mode=strict
	$(VPY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin)); import netmodels.plugins; list(getPlugins(IPlugin, netmodels.plugins))"
	@touch $@

setup: $(STAMP)

# ip and iptables for the lab tests, chromium and chromedriver for the dashboard's browser test:
# installed only when missing, as root, with apt-get.
# Never fails: without them the lab tests skip (or fail, with NETMODELS_LAB_REQUIRED=1 as in CI).
sysdeps:
	@if command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing iproute2 iptables"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq iproute2 iptables >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq iproute2 iptables >/dev/null 2>&1; } \
	    || echo "warning: could not install iproute2/iptables; lab tests will skip"; \
	else \
	  echo "note: ip/iptables missing and cannot install them here; lab tests will skip"; \
	fi
	@# Chromium and its driver for the dashboard's browser test (tests/test_dashboard.py), same way.
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "==> installing chromium chromium-driver"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } \
	    || echo "warning: could not install chromium/chromium-driver; the dashboard browser test will skip"; \
	else \
	  echo "note: chromium/chromedriver missing and cannot install them here; the dashboard browser test will skip"; \
	fi

# --- targets ----------------------------------------------------------------

# A start-up failure is one line from twistd (exit status 1); say which ports to change.
run: setup
	@[ -s $(ADMIN_TOKEN_FILE) ] || (umask 077; head -c 32 /dev/urandom | base64 > $(ADMIN_TOKEN_FILE))
	@echo "netmodels status page: $(STATUS_URL)"
	@echo "admin token (close and reset, on the page or with the CLI) in $(ADMIN_TOKEN_FILE):"
	@echo "  NETMODELS_TOKEN=\$$(cat $(ADMIN_TOKEN_FILE)) $(VENV)/bin/netmodels reset http://127.0.0.1:$(STATUS_PORT) ID"
	@$(VENV)/bin/twistd -n --pidfile= netmodels --demo \
	  --listen tcp:$(DEMO_PORT):interface=127.0.0.1 --status tcp:$(STATUS_PORT):interface=127.0.0.1 \
	  --admin-token-file $(ADMIN_TOKEN_FILE) \
	  || { rc=$$?; [ $$rc -ne 1 ] || echo "make run: is port $(STATUS_PORT) or $(DEMO_PORT) taken? Choose others: make run STATUS_PORT=8081 DEMO_PORT=8751" >&2; exit $$rc; }

# Both runners always run; the target fails if either fails.
test: setup sysdeps
	@rc=0; \
	echo "==> trial"; \
	$(VPY) -m twisted.trial tests || rc=1; \
	echo "==> pytest"; \
	$(VENV)/bin/pytest tests || rc=1; \
	exit $$rc

# Real faults between twistd processes in network namespaces; see docs/fault-lab.rst.
# `$(VPY) -m tests.lab.matrix` regenerates the docs' results table.
lab: setup sysdeps
	$(VPY) -m twisted.trial tests.lab

lint: setup
	@rc=0; \
	echo "==> ruff check"; $(VENV)/bin/ruff check . || rc=1; \
	echo "==> ruff format --check"; $(VENV)/bin/ruff format --check . || rc=1; \
	echo "==> mypy"; $(VENV)/bin/mypy || rc=1; \
	exit $$rc

docs: setup
	$(VENV)/bin/sphinx-build -W docs docs/_build/html

# The peers' libraries (the bench extra) are installed only when missing.
bench: setup
	$(VPY) -c "import uvloop, zmq" 2>/dev/null || $(VPY) -m pip install $(PIP_FLAGS) -e '.[bench]' --config-settings editable_mode=strict
	$(VPY) benchmarks/run_all.py

# Coverage-guided fuzzing (atheris, an optional extra) of the frame decoder and the
# handshake; new inputs go to a scratch copy of the corpus, crashes to fuzz/artifacts/.
# See "Fuzzing" in docs/fault-lab.rst.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS := frames handshake secure
fuzz: setup
	$(VPY) -c "import atheris" 2>/dev/null || $(VPY) -m pip install $(PIP_FLAGS) -e '.[fuzz]' --config-settings editable_mode=strict
	@mkdir -p fuzz/artifacts
	@for target in $(FUZZ_TARGETS); do \
	  work=$$(mktemp -d); cp fuzz/corpus/$$target/* $$work/; \
	  echo "==> fuzz_$$target for $(FUZZ_SECONDS) s"; \
	  PYTHONPATH=. $(VPY) fuzz/fuzz_$$target.py $$work fuzz/corpus/$$target -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=4096 -artifact_prefix=fuzz/artifacts/ || { rm -rf $$work; exit 1; }; \
	  rm -rf $$work; \
	done

# Removing build/ also removes the strict editable tree (build/__editable__.*), so the
# stamp goes too and the next target reinstalls. state/, twistd.pid, twistd.log, token
# and *.sqlite are what nodes write when run from the checkout as the README shows.
clean:
	rm -rf build dist docs/_build fuzz/artifacts _trial_temp _trial_temp-* .hypothesis .mypy_cache .ruff_cache .pytest_cache
	rm -rf state twistd.pid twistd.log token *.sqlite *.sqlite-journal *.sqlite-wal *.sqlite-shm
	rm -rf *.egg-info $(STAMP) $(FILES)
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name dropin.cache \) -print0 \
	  | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
